"""Render videos from an exported model: every prompt of the prompt file, `sample.samples_per_prompt`
times, each from its own recorded seed, with a JSON sidecar; finished videos are skipped, and the work
is split over the job's ranks. See longvid.sample."""

from __future__ import annotations

import logging
from pathlib import Path

from longvid import layout
from longvid.stages import add_config_arguments, path_or, stage_config

log = logging.getLogger(__name__)


def add_arguments(p) -> None:
    add_config_arguments(p, "experiment", "sample")
    p.add_argument("--model", type=Path, help="exported model (default: results/train/{experiment}/final)")
    p.add_argument("--out-dir", type=Path, help="default: results/samples/{experiment}")
    p.add_argument("--work-dir", type=Path, help="where videos are made and kept across runs (default: "
                   "results/sample_runs/{experiment}); --out-dir receives links to the current set")
    p.add_argument("--prompts", type=Path, help="prompt file (default: the experiment's sample.prompts)")


def run(args) -> int:
    from longvid.sample import sample_all

    exp = stage_config(args, "experiment", "sample")
    index = sample_all(exp, path_or(args.model, layout.model_dir(args.experiment)),
                       path_or(args.prompts, Path(exp["sample"]["prompts"])),
                       path_or(args.work_dir, layout.sample_work_dir(args.experiment)),
                       path_or(args.out_dir, layout.samples_dir(args.experiment)))
    if index is not None:
        log.info("wrote %s", index)
    return 0
