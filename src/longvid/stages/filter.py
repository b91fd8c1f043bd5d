"""Score every clip of a shard (frames at the training fps, size, aspect, motion) and keep or reject
it, recording each failed check with its value (the dataset's `filter` section)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from longvid import layout
from longvid.stages import add_config_arguments, path_or, stage_config

log = logging.getLogger(__name__)


def add_arguments(p) -> None:
    add_config_arguments(p, "dataset", "filter")
    p.add_argument("--shard", required=True, help="e.g. s00000")
    p.add_argument("--clips", type=Path, help="clip table from `split` (default: .../{shard}/clips.jsonl)")
    p.add_argument("--out", type=Path, help="output table (default: .../{shard}/filtered.jsonl)")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="parallel clips")


def run(args) -> int:
    from longvid.ingest.filters import filter_shard

    cfg = stage_config(args, "dataset", "filter")
    rows = filter_shard(path_or(args.clips, layout.shard_table(args.dataset, args.shard, "clips")),
                        path_or(args.out, layout.shard_table(args.dataset, args.shard, "filtered")),
                        cfg["filter"], args.workers)
    log.info("filter: kept %d of %d clips", sum(r["keep"] for r in rows), len(rows))
    return 0
