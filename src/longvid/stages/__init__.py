"""Stage entry points: `longvid <stage>` runs `longvid.stages.<stage>`.

Each module is a thin adapter with the same shape: its docstring is the `--help` text,
`add_arguments(parser)` declares the flags, `run(args)` resolves the stage's config, fills in
default paths from `longvid.layout` and calls library code, importing it lazily (so `--help` stays
fast). Every adapter can be run by a person by name (`longvid filter --dataset shapes --shard
s00000`); the workflow's rules run the same command with `--stage-config`, the stage's inputs as
resolved at parse time. No stage imports another stage.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from longvid import config as lvconfig


def add_config_arguments(p: argparse.ArgumentParser, kind: str, stage: str) -> None:
    """--dataset/--experiment NAME, and where its config comes from."""
    p.add_argument(f"--{kind}", required=True, metavar="NAME", help=f"the {kind} (config/{kind}s/NAME.yaml)")
    p.add_argument("--configfile", type=Path, nargs="+", metavar="FILE",
                   help="config files whose overrides apply, merged in order as Snakemake's --configfile "
                   "(default: config/config.yaml)")
    p.add_argument("--stage-config", type=Path, metavar="FILE",
                   help=f"the {stage} stage's inputs as the workflow resolved them (instead of --configfile)")


def stage_config(args, kind: str, stage: str) -> dict:
    """The config sections `stage` reads (longvid.config.stage_inputs), from --stage-config or by name."""
    if args.stage_config is not None:
        return lvconfig.read_stage_config(args.stage_config, kind, stage)
    return lvconfig.by_name(kind, getattr(args, kind), stage, args.configfile)


def path_or(value: Path | None, default: Path) -> Path:
    return Path(value) if value is not None else default
