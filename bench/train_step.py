"""Training throughput of the real training step (loss, backward, AdamW) with peak memory.

Configs, each measured in its own subprocess so peak memory (CUDA max allocated, or peak RSS on CPU)
belongs to that config alone:
  tiny        the embedded default experiment (49 frames, 64x64, hybrid windowed + Mamba2 pre)
  f145        a scaled-down 145-frame hybrid (37 latent frames, windows of 12 + prefix 1)
  f145-full   the same width/depth/frames with full attention: the named reference for f145
Prints samples/s, tokens/s and peak memory per config, and the ratio f145 / f145-full.
Record these numbers when changing the model or the loop, and compare.

    python bench/train_step.py [--steps 10] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

CONFIGS = {
    "tiny": {},
    "f145": {"data": {"num_frames": 145, "height": 128, "width": 128},
             "model": {"overrides": {"attn_window": 12}}},
    "f145-full": {"data": {"num_frames": 145, "height": 128, "width": 128},
                  "model": {"overrides": {"attention": "full", "attn_window": 12}}},
}


def measure(name: str, steps: int, device: str) -> dict:
    import torch

    from longvid import config as lvconfig
    from longvid.diffusion.loss import diffusion_loss
    from longvid.models.regimes import param_groups
    from longvid.runtime import build_dit, build_encoders, build_schedule

    exp = lvconfig.experiment("tiny", CONFIGS[name])
    enc = build_encoders(exp)
    model = build_dit(exp, enc, seed=0).to(device)
    opt = torch.optim.AdamW(param_groups(model, 0.0), lr=1e-4)
    sched = build_schedule(exp)
    d, b = exp["data"], exp["train"]["micro_batch"]
    T, C = (d["num_frames"] - 1) // 4 + 1, enc.vae.latent_channels
    h, w = d["height"] // 8, d["width"] // 8
    x0 = torch.randn(b, T, C, h, w, device=device)
    ctx = torch.randn(b, enc.text.max_length, enc.text.dim, device=device)
    times = []
    for i in range(steps + 2):  # two warm-up steps
        t0 = time.perf_counter()
        t = torch.randint(0, 1000, (b,), device=device)
        loss = diffusion_loss(model, sched, x0, ctx, t, torch.randn_like(x0)).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    tokens = b * T * (h // 2) * (w // 2)
    peak = (torch.cuda.max_memory_allocated() if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"config": name, "step_s": step, "samples_per_s": b / step, "tokens_per_s": tokens / step,
            "video_tokens": tokens, "peak_mb": peak / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # child mode: measure one config, print JSON
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.steps, args.device)))
        return
    results = {}
    for name in CONFIGS:
        out = subprocess.run([sys.executable, __file__, "--one", name, "--steps", str(args.steps), "--device",
                              args.device], capture_output=True, text=True, env=os.environ)
        if out.returncode:
            raise SystemExit(out.stderr[-2000:])
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[name]
        print(f"{name:10s} {r['samples_per_s']:7.2f} samples/s {r['tokens_per_s']:9.0f} tokens/s "
              f"({r['video_tokens']} video tokens/step, {r['step_s'] * 1e3:7.1f} ms/step) peak {r['peak_mb']:7.0f} MB")
    ratio = results["f145"]["step_s"] / results["f145-full"]["step_s"]
    print(f"f145 hybrid / f145-full attention step time = {ratio:.2f}x")


if __name__ == "__main__":
    main()
