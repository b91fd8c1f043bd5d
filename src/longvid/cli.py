"""`longvid <stage> ...`: one subcommand per pipeline stage; every Snakemake rule calls one.

Stage modules are imported lazily so `longvid --help` stays fast and a stage's heavy imports
(torch, cv2, dvc) are paid only by the stage that needs them. A stage module provides
`add_arguments(parser)` and `run(args) -> int | None`, and its docstring is the `--help` text.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from longvid.io import InputError
from longvid.train.accounting import LOG_DATEFMT, LOG_FORMAT

# subcommand -> module. Order is the order of the pipeline.
STAGES: dict[str, str] = {
    "fetch": "longvid.ingest.fetch",
    "shard": "longvid.ingest.shard",
    "probe": "longvid.ingest.probe",
    "split": "longvid.ingest.split",
    "filter": "longvid.ingest.filters",
    "caption": "longvid.caption.stage",
    "dataset": "longvid.dataset.build",
    "publish": "longvid.dvc_publish",
    "encode": "longvid.encode",
    "train": "longvid.train.loop",
    "sample": "longvid.sample",
    "evaluate": "longvid.evaluate.stage",
    "report": "longvid.report.html",
    "viz-data": "longvid.dataset.viz",
    "runtime-report": "longvid.train.accounting",
    "config": "longvid.config",
}


STAGES_HELP = {
    "longvid.ingest.fetch": "materialise a dataset's source videos and write its manifest",
    "longvid.ingest.shard": "split a manifest into fixed-size shards (the unit of every data job)",
    "longvid.ingest.probe": "decode every video of a shard: frames, fps, size, codec, errors",
    "longvid.ingest.split": "detect scenes and cut frame-accurate clips",
    "longvid.ingest.filters": "score clips (length, resolution, aspect, motion) and keep or reject them",
    "longvid.caption.stage": "attach captions to kept clips (passthrough or a VLM endpoint)",
    "longvid.dataset.build": "gather shards into train/val JSONL with stats and plots",
    "longvid.dvc_publish": "version a built dataset (or raw data) with DVC and push it",
    "longvid.encode": "precompute VAE latents and text embeddings into a content-addressed cache",
    "longvid.train.loop": "train an experiment's model (CPU or GPUs; DeepSpeed optional; resumes itself)",
    "longvid.sample": "render videos from a trained model: recorded seeds, sidecars, resumable, sharded",
    "longvid.evaluate.stage": "score samples: flicker, motion, warping, prompted colour/direction, val loss, tier 2",
    "longvid.report.html": "one self-contained HTML page: dataset, loss curves, metrics, sample videos",
    "longvid.dataset.viz": "write what the model sees (sampled, resized, cropped clips) to mp4",
    "longvid.train.accounting": "wall time lost to queueing, preemption and restarts, from training logs",
    "longvid.config": "print the resolved, validated configuration",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longvid", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="stage", metavar="<stage>", required=True)
    for name, module_name in STAGES.items():
        if only is not None and name != only:
            sub.add_parser(name, help=STAGES_HELP[module_name])
            continue
        module = importlib.import_module(module_name)
        p = sub.add_parser(
            name,
            help=STAGES_HELP[module_name],
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    stage = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=stage if stage in STAGES else "")
    args = parser.parse_args(argv)
    # ISO timestamps with zone: `longvid runtime-report` reads these logs back.
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format=LOG_FORMAT,
                        datefmt=LOG_DATEFMT)
    try:
        return int(args._run(args) or 0)
    except InputError as e:
        print(f"longvid {args.stage}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
