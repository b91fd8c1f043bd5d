"""Decode every video of a shard: frame count, fps, displayed size, rotation, codec, errors.

A file that fails to decode becomes a row with an `error`; progress is journaled per video, so a
killed job resumes where it stopped.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from longvid import layout
from longvid.stages import add_config_arguments, path_or, stage_config

log = logging.getLogger(__name__)


def add_arguments(p) -> None:
    add_config_arguments(p, "dataset", "probe")  # probe reads no section; its code version reruns it
    p.add_argument("--shard", required=True, help="e.g. s00000")
    p.add_argument("--manifest", type=Path, help="default: data/shards/{dataset}/{shard}/manifest.jsonl")
    p.add_argument("--out", type=Path, help="output probe table (default: .../{shard}/probe.jsonl)")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="decoding processes")


def run(args) -> int:
    from longvid.ingest.probe import probe_shard

    stage_config(args, "dataset", "probe")  # the dataset must exist and be valid
    rows = probe_shard(path_or(args.manifest, layout.shard_table(args.dataset, args.shard, "manifest")),
                       path_or(args.out, layout.shard_table(args.dataset, args.shard, "probe")), args.workers)
    bad = [r for r in rows if r["error"]]
    for r in bad:
        log.warning("probe %s: %s", r["path"], r["error"])
    log.info("probed %d videos, %d with errors", len(rows), len(bad))
    return 0
