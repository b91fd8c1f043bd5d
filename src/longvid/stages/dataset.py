"""Gather a dataset's captioned shards into data/datasets/{dataset}/: train.jsonl and val.jsonl (the
research code's schema plus clip span and scores), stats.json, stats/*.png and clips/ (the dataset's
`dataset` section). The split is a hash of clip id and seed: stable when clips are added."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from longvid import layout
from longvid.stages import add_config_arguments, path_or, stage_config

log = logging.getLogger(__name__)


def add_arguments(p) -> None:
    add_config_arguments(p, "dataset", "dataset")
    p.add_argument("--shards", nargs="+", type=Path,
                   help="captioned shard tables (default: every shard listed in data/shards/{dataset}/shards.json)")
    p.add_argument("--out-dir", type=Path, help="default: data/datasets/{dataset}")


def run(args) -> int:
    from longvid.dataset.build import build_dataset
    from longvid.io import InputError

    cfg = stage_config(args, "dataset", "dataset")
    shards = args.shards
    if shards is None:
        listing = layout.shards_json(args.dataset)
        if not listing.is_file():
            raise InputError(f"{listing}: missing; run the shard stage first (or give --shards)")
        shards = [layout.shard_table(args.dataset, s, "captioned") for s in json.loads(listing.read_text())["shards"]]
    out = path_or(args.out_dir, layout.dataset_dir(args.dataset))
    summary = build_dataset(shards, out, cfg["dataset"])
    log.info("dataset %s: %d train, %d val clips (%.2f h); %d clips rejected", out, summary["clips"]["train"],
             summary["clips"]["val"], summary["hours"], summary["clips"]["rejected"])
    return 0
