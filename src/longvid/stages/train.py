"""Train an experiment's model: one loop for CPU and GPU, one process or many (srun/torchrun).

Resumes by itself from the newest checkpoint in results/train/{experiment}/checkpoints; on
SIGTERM/SIGUSR1 it saves and exits 75. Writes the exported model to results/train/{experiment}/final
(weights, config with provenance, the training curve). See longvid.train.loop.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from longvid import layout
from longvid.stages import add_config_arguments, path_or, stage_config

log = logging.getLogger("longvid.train")


def add_arguments(p) -> None:
    add_config_arguments(p, "experiment", "train")
    p.add_argument("--dataset-dir", type=Path, help="default: data/datasets/{the experiment's dataset}")
    p.add_argument("--run-dir", type=Path, help="default: results/train/{experiment}")
    p.add_argument("--latents", help="latent index from `longvid encode` (default: data/latents/{experiment}/"
                   "train.jsonl when data.latent_cache is on); empty: encode clips on the fly")


def run(args) -> int:
    from longvid.dist import cleanup
    from longvid.io import write_json
    from longvid.train.loop import Trainer

    exp = stage_config(args, "experiment", "train")
    run_dir = path_or(args.run_dir, layout.run_dir(args.experiment))
    if args.latents is None:
        latents = layout.latent_index(args.experiment) if exp["data"]["latent_cache"] else None
    else:
        latents = Path(args.latents) if args.latents else None
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(exp, run_dir, path_or(args.dataset_dir, layout.dataset_dir(exp["dataset"])), latents)
    if trainer.info.is_main:
        write_json(run_dir / "config.json", exp)
    t0 = time.time()
    code = trainer.fit()
    log.info("training took %.1f s", time.time() - t0)
    cleanup()
    return code
