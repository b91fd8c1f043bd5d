"""Print the resolved, validated configuration: everything config.yaml builds, one dataset or
experiment, or exactly what one stage of it reads (`--stage`, with its code version)."""

from __future__ import annotations

import json
from pathlib import Path


def add_arguments(p) -> None:
    p.add_argument("--configfile", type=Path, help="default: config/config.yaml")  # one file: what it builds
    which = p.add_mutually_exclusive_group()
    which.add_argument("--dataset", metavar="NAME", help="print only this dataset's resolved config")
    which.add_argument("--experiment", metavar="NAME", help="print only this experiment's resolved config")
    p.add_argument("--stage", help="with --dataset/--experiment: only what this stage reads")


def run(args) -> int:
    from longvid import config as lvconfig

    configfile = args.configfile or Path("config/config.yaml")
    kind = "dataset" if args.dataset else "experiment" if args.experiment else None
    if kind and args.stage:
        out = lvconfig.by_name(kind, args.dataset or args.experiment, args.stage, [configfile])
    else:
        raw = lvconfig.load_yaml(configfile)
        root = lvconfig.root_of(configfile)
        top = lvconfig.validate(raw, "config.schema.yaml", str(configfile))
        if args.dataset:
            out = lvconfig.dataset(args.dataset, top["datasets"].get(args.dataset), root)
        elif args.experiment:
            out = lvconfig.experiment(args.experiment, top["experiments"].get(args.experiment), root)
        else:
            out = lvconfig.resolve(raw, root)
    print(json.dumps(out, indent=2))
    return 0
