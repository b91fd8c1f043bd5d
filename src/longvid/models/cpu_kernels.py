"""Fused CPU loops (cpu_kernels.c) for the Mamba2 mixer: gated norm, causal conv, and the whole chunked
SSD scan (ssd.py). fp32 only.

As PyTorch ops every elementwise step was a pass over memory: on one core of an Intel Xeon (Sapphire
Rapids class) at 9.5k tokens the norm took 29-35 ms and the conv 38-44 of a ~250 ms ScanBlock, forward
+ backward; as C loops that read each row once, 6 and 13. The scan runs chunk after chunk per head with
the head's state in cache and its products as small register-tiled loops, which reach 160-190 GFLOP/s
on 64-128 wide blocks where MKL's batched products of them ran at ~90 (forward + backward of one scan
at the benchmark's sizes: 78 ms as PyTorch batched products with C loops between them, now 51 ms).

The C file is compiled once per machine by the system C compiler into the user's cache (keyed by
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

SOURCE = Path(__file__).with_name("cpu_kernels.c")
# 512-bit vectors where the CPU has them (gcc's default is 256): conv and norm 1.3-1.5x faster on AVX-512
FLAGS = ["-O3", "-march=native", "-mprefer-vector-width=512", "-fopenmp-simd", "-fno-math-errno", "-shared",
         "-fPIC"]
LIBS = ["-lmvec", "-lm"]  # glibc's vector math (expf), then libm
MAX_TAPS, MAX_PIECES = 8, 8  # the conv's kernel size and output pieces at most (cpu_kernels.c); Mamba2: 4, 3
MIN_ROWS_PER_THREAD = 256  # below this a thread's start costs more than its share of the loop

_P, _L, _F = ctypes.c_void_p, ctypes.c_long, ctypes.c_float
_SIGNATURES = {
    "gated_norm_fwd": [_P] * 5 + [_L] * 4 + [_F],
    "gated_norm_bwd": [_P] * 8 + [_L] * 4,
    "conv_silu_fwd": [_P] * 5 + [_L] * 7,
    "conv_silu_bwd": [_P] * 5 + [_L] + [_P] * 3 + [_L] * 6,
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
    key = hashlib.sha256("\0".join([SOURCE.read_text(), *FLAGS, *LIBS, version, _cpu_flags()]).encode())
    lib = _cache_dir() / f"cpu_kernels-{key.hexdigest()[:16]}.so"
    if not lib.exists():
        lib.parent.mkdir(parents=True, exist_ok=True)
        # built under a temporary name, then renamed: processes starting together never load half a file
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=lib.parent)
        os.close(fd)
        try:
            done = subprocess.run([cc, *FLAGS, str(SOURCE), "-o", tmp, *LIBS], capture_output=True, text=True)
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
        warnings.warn(f"longvid: fused CPU loops off (building {SOURCE.name} with {cc}: {e}); "
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
