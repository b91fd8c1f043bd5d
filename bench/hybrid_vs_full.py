"""145-frame (37 latent frames) training step: hybrid (windowed attention + bidirectional Mamba2)
vs full attention at the same width and depth, in one process.

Three models share one config except the long-video knobs:
  full      attention over all 37 frames (the reference)
  windowed  the seed's local windows (prefix 1 + 12 frames, stride 12: 3 windows of 13 frames)
  hybrid    windowed + per-layer bidirectional Mamba2, mamba_order post (the seed's `mambav2`)
Prints median forward+backward times, measured ratios against `full`, and the analytic FLOP ratios
for this config and for the real 5B model at 480x720 (where Mamba's projections cost about as much as
the attention they save, see below).

    .venv/bin/python bench/hybrid_vs_full.py                    # CPU-sized
    .venv/bin/python bench/hybrid_vs_full.py --device cuda --dtype bf16 --hidden 1024 --latent 60x90
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from longvid.models.config import DiTConfig, num_windows
from longvid.models.dit import DiT
from longvid.models.registry import make_config


def forward_flops(cfg: DiTConfig, text_len: int) -> float:
    """Matmul FLOPs of one forward pass (backward is about twice this for every model alike)."""
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
        dm, ds, Q = cfg.mamba_width, cfg.mamba_d_state, cfg.mamba_chunk_size
        di = cfg.mamba_expand * dm
        heads = di // cfg.mamba_head_dim
        per_scan = 2 * N * dm * (2 * di + 2 * cfg.mamba_ngroups * ds + heads) + 2 * N * di * dm  # in/out proj
        per_scan += 2 * N * Q * (ds + di) + 4 * N * ds * di  # SSD: intra-chunk + state passing
        per_scan += 4 * N * D * dm if dm != D else 0  # width adapters
        mamba = 2 * per_scan
    return cfg.num_layers * (dense + attn + mamba)


def variants(base: DiTConfig) -> dict[str, DiTConfig]:
    windowed = base.replace(attention="window", attn_prefix_frames=1, attn_window=12)
    return {"full": base, "windowed": windowed, "hybrid": windowed.replace(mamba=True, mamba_order="post")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--latent", default="32x32", help="latent HxW (tokens per frame = HxW/4)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    args = ap.parse_args()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    dev = torch.device(args.device)
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
    print(f"config: hidden {base.hidden_size}, {base.num_layers} layers, {base.latent_frames} latent frames "
          f"x {base.frame_tokens} tokens + {base.text_length} text = {N} tokens, {args.dtype} on {dev}")

    def step(name: str) -> float:
        if dev.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        models[name](x, t, ctx).float().square().mean().backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        models[name].zero_grad(set_to_none=True)
        return time.perf_counter() - start

    for name in models:  # warm-up
        step(name)
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(args.steps):  # interleaved so machine load hits every model alike
        for name in models:
            times[name].append(step(name))
    med = {k: statistics.median(v) for k, v in times.items()}
    flops = {k: forward_flops(c, base.text_length) for k, c in cfgs.items()}
    real = variants(make_config("5b", num_frames=145))
    real_flops = {k: forward_flops(c, 226) for k, c in real.items()}
    for k in models:
        print(f"{k:>9}: {med[k] * 1000:9.1f} ms / step   measured {med[k] / med['full']:.2f}x of full   "
              f"FLOPs {flops[k] / flops['full']:.2f}x here, "
              f"{real_flops[k] / real_flops['full']:.2f}x for 5B@480x720")
    print(f"ratio hybrid / full = {med['hybrid'] / med['full']:.2f}  (goal: well under 0.5)")


if __name__ == "__main__":
    main()
