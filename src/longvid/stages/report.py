"""Write one self-contained HTML page per experiment (results/report/{experiment}.html): dataset stats
and plots, the training curve and provenance (from the exported model), the metrics and the sample
videos, everything embedded. Missing optional inputs become notes on the page. See longvid.report."""

from __future__ import annotations

import logging
from pathlib import Path

from longvid import layout
from longvid.stages import add_config_arguments, path_or, stage_config

log = logging.getLogger(__name__)


def add_arguments(p) -> None:
    add_config_arguments(p, "experiment", "report")
    p.add_argument("--samples", type=Path, help="index.json and videos (default: results/samples/{experiment})")
    p.add_argument("--model", type=Path, help="exported model: step, provenance, training curve "
                   "(default: results/train/{experiment}/final)")
    p.add_argument("--dataset-dir", type=Path, help="stats.json, stats/*.png (default: the experiment's)")
    p.add_argument("--metrics", type=Path, help="from `longvid evaluate` (default: results/eval/{experiment}/metrics.json)")
    p.add_argument("--out", type=Path, help="default: results/report/{experiment}.html")


def run(args) -> int:
    from longvid.io import write_text
    from longvid.report.gather import gather
    from longvid.report.html import render_page

    exp = stage_config(args, "experiment", "report")
    inputs = gather(args.experiment, exp, path_or(args.samples, layout.samples_dir(args.experiment)),
                    dataset_dir=path_or(args.dataset_dir, layout.dataset_dir(exp["dataset"])),
                    model_dir=path_or(args.model, layout.model_dir(args.experiment)),
                    metrics=path_or(args.metrics, layout.metrics(args.experiment)))
    page = render_page(inputs)
    out = path_or(args.out, layout.report(args.experiment))
    write_text(out, page)
    log.info("wrote %s (%.2f MB, %d videos)", out, len(page.encode()) / 1e6, len(inputs.samples))
    return 0
