"""Fused CPU loops for the Mamba2 scan blocks: gated norm, causal conv, the input norm and gated residual
around a scan (cpu_rows.c), and the whole chunked SSD scan (cpu_scan.c, ssd.py); and the MLP's GELU
(fast_gelu.py). fp32 only.

As PyTorch ops every elementwise step was a pass over memory: on one core of an Intel Xeon (Sapphire
Rapids class) at 9.5k tokens the norm took 29-35 ms and the conv 38-44 of a ~250 ms ScanBlock, forward
+ backward; as C loops that read each row once, 6 and 11. The scan runs chunk after chunk per head with
the head's state in cache and its products as small register-tiled loops, which reach 160-190 GFLOP/s
on 64-128 wide blocks where MKL's batched products of them ran at ~90 (forward + backward of one scan
at the benchmark's sizes: 78 ms as PyTorch batched products with C loops between them, now about 47 ms).

The C files are compiled once per machine by the system C compiler into the user's cache (keyed by
source, flags, compiler and CPU, so -march=native is safe) and loaded with ctypes, whose calls release
the GIL: with torch's thread count above 1 the rows (or the scan's heads) are split over that many threads.
Where it cannot be built (no C compiler, not Linux on x86-64) the PyTorch code runs instead, after one
warning; LONGVID_CPU_KERNELS=0 turns the loops off.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

SOURCES = [Path(__file__).with_name(name) for name in ("cpu_rows.c", "cpu_scan.c")]
# 512-bit vectors where the CPU has them (gcc's default is 256): conv and norm 1.3-1.5x faster on AVX-512
FLAGS = ["-O3", "-march=native", "-mprefer-vector-width=512", "-fopenmp-simd", "-fno-math-errno", "-shared",
         "-fPIC"]
LIBS = ["-lmvec", "-lm"]  # glibc's vector math (expf), then libm
MAX_TAPS, MAX_PIECES = 8, 8  # the conv's kernel size and output pieces at most (cpu_rows.c); Mamba2: 4, 3
MIN_ROWS_PER_THREAD = 256  # below this a thread's start costs more than its share of the loop

_P, _L, _I, _F = ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_float
_SIGNATURES = {
    "gated_norm_fwd": [_P] * 5 + [_L] * 4 + [_F],
    "gated_norm_bwd": [_P] * 8 + [_L] * 4,
    "conv_silu_fwd": [_P] * 5 + [_L] * 7,
    "conv_silu_bwd": [_P] * 5 + [_L] + [_P] * 3 + [_L] * 6,
    "layer_norm_fwd": [_P] * 6 + [_L] * 3 + [_I, _F, _L, _L],
    "layer_norm_bwd": [_P] * 8 + [_L] * 3 + [_I, _L, _L],
    "gated_add_fwd": [_P] * 4 + [_L] * 3 + [_I, _L, _L],
    "gated_add_bwd": [_P] * 5 + [_L] * 3 + [_I, _L, _L],
    "gelu_tanh_fwd": [_P] * 2 + [_L] * 2,
    "gelu_tanh_bwd": [_P] * 3 + [_L] * 2,
    "ssd_scan_fwd": [_P] * 10 + [_L] * 8 + [_F, _L, _L],
    "ssd_scan_bwd": [_P] * 16 + [_L] * 8 + [_F, _L, _L],
}


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "longvid"


def _cpu_flags() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line for line in lines if line.startswith("flags"))
    except (OSError, StopIteration):
        return platform.processor()


def _build(cc: str) -> Path:
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=True).stdout
    texts = [source.read_text() for source in SOURCES]
    key = hashlib.sha256("\0".join([*texts, *FLAGS, *LIBS, version, _cpu_flags()]).encode())
    lib = _cache_dir() / f"cpu_kernels-{key.hexdigest()[:16]}.so"
    if not lib.exists():
        lib.parent.mkdir(parents=True, exist_ok=True)
        # built under a temporary name, then renamed: processes starting together never load half a file
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=lib.parent)
        os.close(fd)
        try:
            done = subprocess.run([cc, *FLAGS, *map(str, SOURCES), "-o", tmp, *LIBS], capture_output=True,
                                  text=True)
            if done.returncode:
                raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed")
            os.replace(tmp, lib)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return lib


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled loops, built on first call; None where they are switched off or cannot be built."""
    if os.environ.get("LONGVID_CPU_KERNELS", "1") == "0":
        return None
    cc = os.environ.get("CC") or "cc"
    if platform.system() != "Linux" or platform.machine() != "x86_64" or not shutil.which(cc):
        why = f"C compiler {cc!r} not found" if platform.machine() == "x86_64" else "not Linux on x86-64"
        warnings.warn(f"longvid: fused CPU loops off ({why}); Mamba2 runs as PyTorch ops only")
        return None
    try:
        lib = ctypes.CDLL(str(_build(cc)))
    except (OSError, RuntimeError, subprocess.CalledProcessError) as e:
        names = ", ".join(source.name for source in SOURCES)
        warnings.warn(f"longvid: fused CPU loops off (building {names} with {cc}: {e}); "
                      "Mamba2 runs as PyTorch ops only")
        return None
    for name, args in _SIGNATURES.items():
        getattr(lib, name).argtypes = args
        getattr(lib, name).restype = None
    return lib


def applies(*tensors: torch.Tensor | None) -> bool:
    """True where every given tensor is an fp32 CPU tensor and the loops are available (the functions
    below take them in any layout: they make contiguous copies where needed)."""
    return all(t is None or (t.device.type == "cpu" and t.dtype == torch.float32) for t in tensors) \
        and library() is not None


@functools.cache
def _pool(threads: int, pid: int) -> ThreadPoolExecutor:
    """Per process: a forked child (a data loader worker) inherits the parent's pool without its threads."""
    return ThreadPoolExecutor(threads, thread_name_prefix="longvid-cpu")


def _over_rows(rows: int, call, *partials: torch.Tensor, min_rows: int = MIN_ROWS_PER_THREAD,
               written: bool = False) -> None:
    """call(t0, t1, *buffers) over row ranges covering [0, rows), one per thread; each range adds its
    sums into its own zeroed copy of `partials`, which are then added into the given tensors. With
    written=True every range writes all of its copy (the given tensors need no zeroing) and they are
    set to the copies' sum. With one range, the given tensors are the buffers."""
    n = max(1, min(torch.get_num_threads(), rows // min_rows))
    if n == 1:
        call(0, rows, *partials)
        return
    bounds = [rows * i // n for i in range(n + 1)]
    own = [[(torch.empty_like if written else torch.zeros_like)(p) for p in partials] for _ in range(n)]
    for f in [_pool(n, os.getpid()).submit(call, bounds[i], bounds[i + 1], *own[i]) for i in range(n)]:
        f.result()
    for i, p in enumerate(partials):
        total = sum(o[i] for o in own)
        (p.copy_ if written else p.add_)(total)


def _ptr(t: torch.Tensor | None) -> int | None:
    assert t is None or t.is_contiguous(), "the C loops read rows as contiguous memory"
    return None if t is None else t.data_ptr()


def gated_norm_forward(y, z, weight, eps: float, group_size: int):
    """rmsnorm(y * silu(z)) * weight per group, and 1/rms per row and group (for the backward)."""
    y, z, weight = (t.contiguous() for t in (y, z, weight))
    d = y.shape[-1]
    out = torch.empty_like(y)
    r = y.new_empty(*y.shape[:-1], d // group_size)
    _over_rows(y.numel() // d, lambda t0, t1: library().gated_norm_fwd(
        *map(_ptr, (y, z, weight, out, r)), t0, t1, d, group_size, eps))
    return out, r


def gated_norm_backward(y, z, weight, r, grad, group_size: int):
    """Gradients of gated_norm_forward: (gy, gz, gweight)."""
    y, z, weight, r, grad = (t.contiguous() for t in (y, z, weight, r, grad))
    d = y.shape[-1]
    gy, gz, gw = torch.empty_like(y), torch.empty_like(y), y.new_zeros(d)
    _over_rows(y.numel() // d, lambda t0, t1, gw_: library().gated_norm_bwd(
        *map(_ptr, (y, z, weight, r, grad, gy, gz, gw_)), t0, t1, d, group_size), gw)
    return gy, gz, gw


def _pointers(tensors) -> ctypes.Array:
    return (ctypes.c_void_p * len(tensors))(*map(_ptr, tensors))


def conv_silu_forward(x, weight_t, bias, widths: list[int]) -> list[torch.Tensor]:
    """silu(causal depthwise conv) of x (b, L, ch) with weight_t (K, ch), as pieces of `widths` channels."""
    x, weight_t = x.contiguous(), weight_t.contiguous()
    bias = None if bias is None else bias.contiguous()
    b, L, ch = x.shape
    assert weight_t.shape[0] <= MAX_TAPS and len(widths) <= MAX_PIECES
    outs = [x.new_empty(b, L, w) for w in widths]
    ptrs, ws = _pointers(outs), (ctypes.c_long * len(widths))(*widths)
    _over_rows(L, lambda t0, t1: library().conv_silu_fwd(
        _ptr(x), _ptr(weight_t), _ptr(bias), ptrs, ws, len(widths), b, L, ch, weight_t.shape[0], t0, t1))
    return outs


def conv_silu_backward(x, weight_t, bias, grads: list[torch.Tensor]):
    """Gradients of conv_silu_forward given its pieces' gradients: (gx, gweight_t, gbias)."""
    b, L, ch = x.shape
    K = weight_t.shape[0]
    x, weight_t, grads = x.contiguous(), weight_t.contiguous(), [g.contiguous() for g in grads]
    bias = None if bias is None else bias.contiguous()
    assert K <= MAX_TAPS and len(grads) <= MAX_PIECES
    gx, gwt, gb = torch.empty_like(x), x.new_zeros(K, ch), x.new_zeros(ch)
    ptrs, ws = _pointers(grads), (ctypes.c_long * len(grads))(*(g.shape[-1] for g in grads))
    _over_rows(L, lambda t0, t1, gwt_, gb_: library().conv_silu_bwd(
        _ptr(x), _ptr(weight_t), _ptr(bias), ptrs, ws, len(grads), _ptr(gx), _ptr(gwt_), _ptr(gb_),
        b, L, ch, K, t0, t1), gwt, gb)
    return gx, gwt, gb


def _rows(x: torch.Tensor) -> tuple[int, int]:
    """(rows per batch, channels) of a (b, N, d) tensor."""
    return x.shape[-2], x.shape[-1]


def scan_norm_forward(x, weight, bias, eps: float, keep: int, reverse: bool):
    """layer_norm(x) * weight + bias of x (b, N, d) with its rows in scan order (rows from `keep` on
    reversed if `reverse`), and per row the mean and 1/std for the backward."""
    x, weight, bias = (t.contiguous() for t in (x, weight, bias))
    N, d = _rows(x)
    out, mean, rstd = torch.empty_like(x), x.new_empty(x.shape[:-1]), x.new_empty(x.shape[:-1])
    _over_rows(x.numel() // d, lambda r0, r1: library().layer_norm_fwd(
        *map(_ptr, (x, weight, bias, out, mean, rstd)), N, d, keep, reverse, eps, r0, r1))
    return out, mean, rstd


def scan_norm_backward(x, weight, mean, rstd, grad, keep: int, reverse: bool):
    """Gradients of scan_norm_forward: (gx in x's order, gweight, gbias)."""
    x, weight, grad = x.contiguous(), weight.contiguous(), grad.contiguous()
    N, d = _rows(x)
    gx, gw, gb = torch.empty_like(x), x.new_zeros(d), x.new_zeros(d)
    _over_rows(x.numel() // d, lambda r0, r1, gw_, gb_: library().layer_norm_bwd(
        *map(_ptr, (x, weight, mean, rstd, grad, gx, gw_, gb_)), N, d, keep, reverse, r0, r1), gw, gb)
    return gx, gw, gb


def gated_add_forward(h, alpha, m, keep: int, reverse: bool):
    """h + alpha * m with m (b, N, d) in scan order (see scan_norm_forward), alpha (d,)."""
    h, alpha, m = (t.contiguous() for t in (h, alpha, m))
    N, d = _rows(h)
    out = torch.empty_like(h)
    _over_rows(h.numel() // d, lambda r0, r1: library().gated_add_fwd(
        *map(_ptr, (h, m, alpha, out)), N, d, keep, reverse, r0, r1))
    return out


def gated_add_backward(alpha, m, grad, keep: int, reverse: bool):
    """Gradients of gated_add_forward but h's (grad itself): (galpha, gm in scan order)."""
    alpha, m, grad = alpha.contiguous(), m.contiguous(), grad.contiguous()
    N, d = _rows(m)
    gm, galpha = torch.empty_like(m), m.new_zeros(d)
    _over_rows(m.numel() // d, lambda r0, r1, ga_: library().gated_add_bwd(
        *map(_ptr, (grad, m, alpha, gm, ga_)), N, d, keep, reverse, r0, r1), galpha)
    return galpha, gm


def _over_elements(x: torch.Tensor, call) -> None:
    """call(i0, i1) over element ranges of x split at row boundaries (rows: x's last dim)."""
    d = max(x.shape[-1], 1) if x.dim() else 1
    _over_rows(x.numel() // d, lambda r0, r1: call(r0 * d, r1 * d))


def gelu_tanh_forward(x):
    """F.gelu(x, approximate="tanh")."""
    x = x.contiguous()
    out = torch.empty_like(x)
    _over_elements(x, lambda i0, i1: library().gelu_tanh_fwd(_ptr(x), _ptr(out), i0, i1))
    return out


def gelu_tanh_backward(x, grad):
    """The gradient of gelu_tanh_forward at x, given the output's."""
    x, grad = x.contiguous(), grad.contiguous()
    gx = torch.empty_like(x)
    _over_elements(x, lambda i0, i1: library().gelu_tanh_bwd(_ptr(x), _ptr(grad), _ptr(gx), i0, i1))
    return gx


# The chunked SSD scan (ssd.py names and shapes), split over threads by heads within a group: each
# thread carries its heads' states through all chunks; B's and C's gradients are sums over heads, so
# each thread writes its own copy of them.

def _scan_geometry(x, B, a):
    b, L, h, p = x.shape
    g, n = B.shape[-2:]
    return b, L, a.shape[1], g, h // g, a.shape[-1], p, n


def ssd_scan_forward(x, dt, a, B, C, D, floor: float):
    """y (b, L, h, p) and the final state (b, h, p, n); and for the backward S = C B^T per chunk (b, g, c,
    l, l) and the state before every chunk (b, h, c, p, n). x (b, L, h, p), dt (b, L, h), a (b, c, h, l):
    cumulative dt A per chunk in log2 units, B and C (b, L, g, n), D (h, p) or None: y += D x."""
    x, dt, a, B, C = (t.contiguous() for t in (x, dt, a, B, C))
    D = None if D is None else D.contiguous()
    b, L, c, g, hg, l, p, n = geometry = _scan_geometry(x, B, a)
    y, final, hprev = torch.empty_like(x), x.new_empty(b, g * hg, p, n), x.new_empty(b, g * hg, c, p, n)
    S = x.new_empty(b, g, c, l, l)
    _over_rows(hg, lambda h0, h1: library().ssd_scan_fwd(
        *map(_ptr, (x, dt, a, B, C, D, y, S, hprev, final)), *geometry, floor, h0, h1), min_rows=1)
    return y, final, S, hprev


def ssd_scan_backward(x, dt, a, B, C, D, S, hprev, gy, g_final, floor: float):
    """Gradients of ssd_scan_forward's y and final state (either None for zero): gx, gdt, ga (b, c, h, l)
    in natural units (a's own cumulative sum is the caller's), gB, gC, gD (h, p; None without D)."""
    x, dt, a, B, C = (t.contiguous() for t in (x, dt, a, B, C))
    D = None if D is None else D.contiguous()
    gD = None if D is None else torch.zeros_like(D)  # per head: the threads' parts do not overlap
    gy = torch.zeros_like(x) if gy is None else gy.contiguous()
    g_final = None if g_final is None else g_final.contiguous()
    b, L, c, g, hg, l, p, n = geometry = _scan_geometry(x, B, a)
    gx, gdt, ga = torch.empty_like(x), torch.empty_like(dt), a.new_zeros(a.shape)
    gB, gC = torch.empty_like(B), torch.empty_like(C)  # each call writes them whole (its heads' share)
    _over_rows(hg, lambda h0, h1, gB_, gC_: library().ssd_scan_bwd(
        *map(_ptr, (x, dt, a, B, C, D, S, hprev, gy, g_final, gx, gdt, ga, gB_, gC_, gD)), *geometry, floor,
        h0, h1), gB, gC, min_rows=1, written=True)
    return gx, gdt, ga, gB, gC, gD
