"""Detect scenes and cut them into frame-accurate clips (the dataset's `split` section).

Clips go to data/clips/{dataset}/{shard}/; progress is journaled per video, so a killed job resumes
without re-cutting finished videos.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from longvid import layout
from longvid.stages import add_config_arguments, path_or, stage_config

log = logging.getLogger(__name__)


def add_arguments(p) -> None:
    add_config_arguments(p, "dataset", "split")
    p.add_argument("--shard", required=True, help="e.g. s00000")
    p.add_argument("--probe", type=Path, help="probed shard table (default: .../{shard}/probe.jsonl)")
    p.add_argument("--out", type=Path, help="output clip table (default: .../{shard}/clips.jsonl)")
    p.add_argument("--clip-dir", type=Path, help="where cut clips go (default: data/clips/{dataset}/{shard})")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="parallel videos")


def run(args) -> int:
    from longvid.ingest.split import split_shard

    cfg = stage_config(args, "dataset", "split")
    videos, clips, errors = split_shard(
        path_or(args.probe, layout.shard_table(args.dataset, args.shard, "probe")),
        path_or(args.out, layout.shard_table(args.dataset, args.shard, "clips")),
        path_or(args.clip_dir, layout.clip_dir(args.dataset, args.shard)), cfg, args.workers)
    log.info("split %d videos into %d clips (%d errors)", videos, clips, errors)
    return 0
