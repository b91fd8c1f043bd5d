"""Training throughput of the real training step (`Trainer.train_step`: per-sample generators, text
dropout, autocast, loss, backward, clipping, AdamW) with peak memory.

Batches come through the trainer's own loader from a latent cache of random latents, shaped by the
built VAE and DiT (`runtime.Geometry`), as in training with `data.latent_cache`: video decoding and
VAE encoding are not timed.

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
import tempfile
import time
from pathlib import Path

CONFIGS = {
    "tiny": {},
    "f145": {"data": {"num_frames": 145, "height": 128, "width": 128},
             "model": {"overrides": {"attn_window": 12}}},
    "f145-full": {"data": {"num_frames": 145, "height": 128, "width": 128},
                  "model": {"overrides": {"attention": "full", "attn_window": 12}}},
}


def random_latent_cache(exp: dict, root: Path, count: int) -> Path:
    """A latent-cache index (longvid.encode's format) of `count` random clips of the experiment's
    size; the latent shape is read from the built encoders and DiT config, as the trainer's."""
    import torch
    from safetensors.torch import save_file

    from longvid.io import write_jsonl
    from longvid.runtime import Geometry, build_encoders, dit_config

    enc = build_encoders(exp)
    geometry, d = Geometry.of(enc.vae, dit_config(exp, enc)), exp["data"]
    shape = (geometry.latent_frames(d["num_frames"], "data.num_frames"), enc.vae.latent_channels,
             *geometry.latent_size(d["height"], d["width"], "data.height/width"))
    g, rows = torch.Generator().manual_seed(0), []
    for i in range(count):
        save_file({"latents": torch.randn(shape, generator=g),
                   "context": torch.randn(enc.text.max_length, enc.text.dim, generator=g)},
                  str(root / f"{i}.safetensors"))
        rows.append({"id": str(i), "key": str(i), "file": f"{i}.safetensors"})
    write_jsonl(root / "index.jsonl", rows)
    return root / "index.jsonl"


def measure(name: str, steps: int, device: str) -> dict:
    import torch

    from longvid import config as lvconfig
    from longvid.train.loop import Trainer

    exp = lvconfig.experiment("tiny", CONFIGS[name])
    t = exp["train"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        index = random_latent_cache(exp, root, 4 * t["micro_batch"] * t["grad_accum"])
        trainer = Trainer(exp, root / "run", root, index)  # picks CUDA when visible (longvid.dist)
        if trainer.device.type != device:
            raise SystemExit(f"--device {device}: the trainer runs on {trainer.device}")
        batches, times, tokens, samples = trainer.batches(), [], 0, 0
        for i in range(steps + 2):  # two warm-up steps
            t0 = time.perf_counter()
            _, tokens, samples = trainer.train_step(batches)
            trainer.step += 1  # the next step's per-sample generators, as in Trainer.fit
            if device == "cuda":
                torch.cuda.synchronize()
            if i >= 2:
                times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    peak = (torch.cuda.max_memory_allocated() if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"config": name, "step_s": step, "samples_per_s": samples / step, "tokens_per_s": tokens / step,
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
    # a CPU run on a GPU machine: hide the GPUs, as the trainer takes one whenever it sees it
    env = {**os.environ, "WANDB_MODE": "disabled",
           **({"CUDA_VISIBLE_DEVICES": ""} if args.device == "cpu" else {})}
    for name in CONFIGS:
        out = subprocess.run([sys.executable, __file__, "--one", name, "--steps", str(args.steps), "--device",
                              args.device], capture_output=True, text=True, env=env)
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
