"""Score an experiment's samples: tier-1 metrics always (flicker, motion, warping, static frames,
prompted colour/direction for the shapes grammar, validation loss, all against held-out clips as the
reference), tier 2 (FVD, CLIPScore, VBench) when local weights are configured. See longvid.evaluate."""

from __future__ import annotations

import logging
from pathlib import Path

from longvid import layout
from longvid.stages import add_config_arguments, path_or, stage_config

log = logging.getLogger(__name__)


def add_arguments(p) -> None:
    add_config_arguments(p, "experiment", "evaluate")
    p.add_argument("--model", type=Path, help="exported model (default: results/train/{experiment}/final)")
    p.add_argument("--samples", type=Path, help="samples with index.json (default: results/samples/{experiment})")
    p.add_argument("--dataset-dir", type=Path, help="val.jsonl's dataset (default: the experiment's)")
    p.add_argument("--out", type=Path, help="default: results/eval/{experiment}/metrics.json")


def run(args) -> int:
    import torch

    from longvid.evaluate.stage import evaluate
    from longvid.io import write_json

    exp = {**stage_config(args, "experiment", "evaluate"), "name": args.experiment}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    metrics = evaluate(exp, path_or(args.model, layout.model_dir(args.experiment)),
                       path_or(args.samples, layout.samples_dir(args.experiment)),
                       path_or(args.dataset_dir, layout.dataset_dir(exp["dataset"])), device)
    out = path_or(args.out, layout.metrics(args.experiment))
    write_json(out, metrics)
    for row in metrics["table"]:
        log.info("%-50s samples=%s reference=%s", row["label"], row["samples"], row["reference"])
    return 0
