"""145-frame (37 latent frames) training step: hybrid (windowed attention + bidirectional Mamba2)
vs full attention at the same width and depth, in one process.

Three models share one config except the long-video knobs:
  full      attention over all 37 frames (the reference)
  windowed  the seed's local windows (prefix 1 + 12 frames, stride 12: 3 windows of 13 frames)
  hybrid    windowed + per-layer bidirectional Mamba2, mamba_order post (the seed's `mambav2`)
Steps alternate between the models so that load on a shared machine hits all alike. Prints each
model's median forward+backward time and, side by side, its measured time and its matmul FLOPs
relative to `full`: forward FLOPs, and forward+backward FLOPs (flash attention's backward recomputes
the scores, 2.5x its forward, where linear layers and the PyTorch Mamba2 scan take 2x), both with the
scan chunk the Mamba code really uses on this device; and forward FLOPs of the real 5B model at
480x720, where Mamba's projections cost about as much as the attention the windows save. Then
whether the hybrid's measured ratio is within 10 % of its FLOP ratio.

On CPU, fp32 runs Mamba2's norm, conv and scan, the norm and gated residual around each scan, and (in
all three models) the MLP's GELU as C code (longvid.models.cpu_kernels) unless LONGVID_CPU_KERNELS=0,
which times the all-PyTorch path instead; the config line says which ran.

On Linux the CPU allocator is told to keep freed memory (glibc mallopt; --malloc default does not):
with glibc's adaptive thresholds the heap went back to the system and was faulted in again every
step, 20-140k page faults that cost the hybrid 5-9 % of its step (the other two models none), by an
amount that shifted with incidental changes of the largest tensor's size.

    .venv/bin/python bench/hybrid_vs_full.py                    # CPU-sized, 1 thread
    .venv/bin/python bench/hybrid_vs_full.py --clock cpu        # process CPU time: steadier when shared
    .venv/bin/python bench/hybrid_vs_full.py --device cuda --dtype bf16 --hidden 1024 --latent 60x90
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import time

import torch

from longvid.models.config import DiTConfig, num_windows
from longvid.models import cpu_kernels
from longvid.models.dit import DiT
from longvid.models.mamba2 import TORCH_SCAN_CHUNK, _cuda_kernels
from longvid.models.registry import make_config


def flops(cfg: DiTConfig, text_len: int, scan_chunk: int) -> dict[str, float]:
    """Matmul FLOPs of one forward pass: dense layers, attention, Mamba2 (scan with chunk scan_chunk)."""
    T, n, D = cfg.latent_frames, cfg.frame_tokens, cfg.hidden_size
    N = text_len + T * n
    dense = 24 * N * D * D  # qkv + out + 4x MLP
    if cfg.attention == "full":
        attn = 4 * N * N * D
    else:
        S = text_len + (cfg.attn_prefix_frames + cfg.attn_window) * n
        attn = (num_windows(cfg, T) - cfg.repeat_attn_steps) * 4 * S * S * D
    mamba = 0.0
    if cfg.mamba:
        dm, ds, g, Q = cfg.mamba_width, cfg.mamba_d_state, cfg.mamba_ngroups, scan_chunk
        di = cfg.mamba_expand * dm
        heads = di // cfg.mamba_head_dim
        per_scan = 2 * N * dm * (2 * di + 2 * g * ds + heads) + 2 * N * di * dm  # in/out proj
        per_scan += 2 * N * Q * (g * ds + di) + 4 * N * ds * di  # SSD: C B^T and M x per chunk; states in/out
        per_scan += 4 * N * D * dm if dm != D else 0  # width adapters
        mamba = 2 * per_scan
    return {k: cfg.num_layers * v for k, v in {"dense": dense, "attn": attn, "mamba": mamba}.items()}


def forward_flops(cfg: DiTConfig, text_len: int, scan_chunk: int) -> float:
    return sum(flops(cfg, text_len, scan_chunk).values())


def step_flops(cfg: DiTConfig, text_len: int, scan_chunk: int) -> float:
    """Forward + backward: 3x forward for matmuls, 3.5x for flash attention (recomputed scores)."""
    f = flops(cfg, text_len, scan_chunk)
    return 3 * (f["dense"] + f["mamba"]) + 3.5 * f["attn"]


def variants(base: DiTConfig) -> dict[str, DiTConfig]:
    windowed = base.replace(attention="window", attn_prefix_frames=1, attn_window=12)
    return {"full": base, "windowed": windowed, "hybrid": windowed.replace(mamba=True, mamba_order="post")}


def keep_freed_memory() -> bool:
    """glibc: no trimming of the heap, no mmap below 32 MiB (the largest threshold it accepts)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-1, 1 << 30) and libc.mallopt(-3, 32 << 20))  # M_TRIM_, M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--latent", default="32x32", help="latent HxW (tokens per frame = HxW/4)")
    ap.add_argument("--steps", type=int, default=7, help="timed steps per model (after one warm-up each)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: this process's CPU time, unaffected by other jobs taking the cores (CPU only)")
    ap.add_argument("--malloc", choices=["keep", "default"], default="keep",
                    help="keep: glibc keeps freed memory (see above); default: leave glibc's tuning alone")
    args = ap.parse_args()
    malloc = "kept" if args.malloc == "keep" and keep_freed_memory() else "default"
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    dev = torch.device(args.device)
    if args.clock == "cpu" and dev.type != "cpu":
        ap.error("--clock cpu measures CPU work only; use wall on an accelerator")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    H, W = map(int, args.latent.split("x"))
    base = make_config("tiny", num_frames=145, latent_height=H, latent_width=W, hidden_size=args.hidden,
                       num_heads=args.heads, num_layers=args.layers, time_embed_dim=128, text_dim=128,
                       text_length=32, mamba_d_state=128, mamba_chunk_size=256)  # seed's Mamba2 defaults
    cfgs = variants(base)
    torch.manual_seed(0)
    models = {k: DiT(c).to(dev, dtype).train() for k, c in cfgs.items()}
    x = torch.randn(1, base.latent_frames, base.in_channels, H, W, device=dev, dtype=dtype)
    ctx = torch.randn(1, base.text_length, base.text_dim, device=dev, dtype=dtype)
    t = torch.tensor([500], device=dev)
    N = base.text_length + base.latent_frames * base.frame_tokens
    kernels = dev.type == "cuda" and _cuda_kernels() is not None
    chunk = base.mamba_chunk_size if kernels else min(base.mamba_chunk_size, TORCH_SCAN_CHUNK)
    mamba_path = ("mamba_ssm kernels" if kernels else
                  "C scan, conv and norm (cpu_kernels)" if cpu_kernels.applies(x) else "PyTorch")
    print(f"config: hidden {base.hidden_size}, {base.num_layers} layers, {base.latent_frames} latent frames "
          f"x {base.frame_tokens} tokens + {base.text_length} text = {N} tokens, {args.dtype} on {dev}, "
          f"{torch.get_num_threads()} threads, {args.clock} clock, {malloc} malloc; Mamba2: "
          f"{mamba_path}, chunk {chunk}")

    def step(name: str) -> float:
        if dev.type == "cuda":
            torch.cuda.synchronize()
        start = clock()
        models[name](x, t, ctx).float().square().mean().backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        models[name].zero_grad(set_to_none=True)
        return clock() - start

    for name in models:  # warm-up
        step(name)
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(args.steps):  # interleaved so machine load hits every model alike
        for name in models:
            times[name].append(step(name))
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = {k: med[k] / med["full"] for k in models}
    fwd = {k: forward_flops(c, base.text_length, chunk) for k, c in cfgs.items()}
    stp = {k: step_flops(c, base.text_length, chunk) for k, c in cfgs.items()}
    real = {k: forward_flops(c, 226, c.mamba_chunk_size)
            for k, c in variants(make_config("5b", num_frames=145)).items()}
    print(f"{'':>9}  {'ms / step':>9}  measured  FLOPs fwd  fwd+bwd  5B fwd   (relative to full; "
          f"median of {args.steps})")
    for k in models:
        print(f"{k:>9}  {med[k] * 1000:9.1f}  {ratio[k]:7.2f}x  {fwd[k] / fwd['full']:8.2f}x  "
              f"{stp[k] / stp['full']:6.2f}x  {real[k] / real['full']:5.2f}x")
    m, f, s = ratio["hybrid"], fwd["hybrid"] / fwd["full"], stp["hybrid"] / stp["full"]
    yes = {True: "yes", False: "no"}
    print(f"hybrid/full measured {m:.2f}x vs FLOPs {f:.2f}x (within 10 %: {yes[abs(m / f - 1) <= 0.1]}); "
          f"vs forward+backward FLOPs {s:.2f}x (within 10 %: {yes[abs(m / s - 1) <= 0.1]})")


if __name__ == "__main__":
    main()
