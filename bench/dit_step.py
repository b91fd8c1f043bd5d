"""DiT training step (forward + backward): longvid vs diffusers' CogVideoXTransformer3DModel.

Same config, same weights (converted), same inputs, one process; the two models alternate so load
changes on a shared machine hit both. Prints median step times and the ratio diffusers / longvid
(> 1 means longvid is faster), and checks the outputs agree before timing.

    .venv/bin/python bench/dit_step.py                 # CPU-sized 5B-like (RoPE) config
    .venv/bin/python bench/dit_step.py --pos sincos    # 2B-like
    .venv/bin/python bench/dit_step.py --device cuda --dtype bf16 --hidden 1024 --layers 8 --latent 60x90
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from diffusers import CogVideoXTransformer3DModel
from diffusers.models.embeddings import get_3d_rotary_pos_embed

from longvid.models.convert_diffusers import diffusers_config, diffusers_to_longvid
from longvid.models.dit import DiT
from longvid.models.registry import make_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pos", choices=["rope", "sincos"], default="rope")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--frames", type=int, default=49, help="pixel frames (8N+1)")
    ap.add_argument("--latent", default="16x16", help="latent HxW")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    args = ap.parse_args()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    H, W = map(int, args.latent.split("x"))
    cfg = make_config("tiny", pos_embed=args.pos, hidden_size=args.hidden, num_heads=args.heads,
                      num_layers=args.layers, num_frames=args.frames, latent_height=H, latent_width=W,
                      time_embed_dim=128, text_dim=256, text_length=32, norm_eps=1e-6)
    dev = torch.device(args.device)
    torch.manual_seed(0)
    ref = CogVideoXTransformer3DModel(**diffusers_config(cfg)).to(dev, dtype).train()
    ours = DiT(cfg)
    ours.load_state_dict(diffusers_to_longvid(ref.state_dict()))
    ours = ours.to(dev, dtype).train()

    T = cfg.latent_frames
    x = torch.randn(args.batch, T, cfg.in_channels, H, W, device=dev, dtype=dtype)
    ctx = torch.randn(args.batch, cfg.text_length, cfg.text_dim, device=dev, dtype=dtype)
    t = torch.randint(0, 1000, (args.batch,), device=dev)
    rot = None
    if args.pos == "rope":  # diffusers takes the tables from its pipeline; built once, outside the timing
        gh, gw = H // cfg.patch_size, W // cfg.patch_size
        rot = get_3d_rotary_pos_embed(cfg.head_dim, ((0, 0), (gh, gw)), (gh, gw), T, device=dev)

    def step_ref():
        ref(x, ctx, t, image_rotary_emb=rot, return_dict=False)[0].float().square().mean().backward()

    def step_ours():
        ours(x, t, ctx).float().square().mean().backward()

    with torch.no_grad():
        want = ref(x, ctx, t, image_rotary_emb=rot, return_dict=False)[0]
        diff = (want - ours(x, t, ctx)).abs().max().item()
    tokens = cfg.text_length + T * cfg.frame_tokens
    print(f"config: {args.pos}, hidden {cfg.hidden_size}, {cfg.num_layers} layers, {cfg.num_heads} heads, "
          f"{T} latent frames x {cfg.frame_tokens} tokens + {cfg.text_length} text = {tokens} tokens, "
          f"batch {args.batch}, {args.dtype} on {dev}; max |diffusers - longvid| = {diff:.2e}")

    def timed(fn) -> float:
        if dev.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    times = {"diffusers": [], "longvid": []}
    for fn in (step_ref, step_ours, step_ref, step_ours):  # warm-up
        fn()
    for _ in range(args.steps):
        times["diffusers"].append(timed(step_ref))
        times["longvid"].append(timed(step_ours))
        ref.zero_grad(set_to_none=True)
        ours.zero_grad(set_to_none=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"{k:>10}: {v * 1000:8.1f} ms / step (median of {args.steps})")
    print(f"ratio diffusers / longvid = {med['diffusers'] / med['longvid']:.2f}x  (> 1: longvid faster)")


if __name__ == "__main__":
    main()
