"""Attach captions to the kept clips of a shard (the dataset's `caption` section).

  passthrough  keep the source captions: those whose time span overlaps the clip (or that cover the
               whole video) become `caps`; the one overlapping most becomes `text`. A clip without
               one gets `caption_error`.

Rejected clips pass through unchanged, so the shard table stays complete.
"""

from __future__ import annotations

import logging
from pathlib import Path

from longvid import layout
from longvid.stages import add_config_arguments, path_or, stage_config

log = logging.getLogger(__name__)


def add_arguments(p) -> None:
    add_config_arguments(p, "dataset", "caption")
    p.add_argument("--shard", required=True, help="e.g. s00000")
    p.add_argument("--clips", type=Path, help="filtered clip table (default: .../{shard}/filtered.jsonl)")
    p.add_argument("--out", type=Path, help="output (default: .../{shard}/captioned.jsonl)")


def run(args) -> int:
    from longvid.caption.passthrough import caption_shard

    cfg = stage_config(args, "dataset", "caption")
    kept, missing = caption_shard(path_or(args.clips, layout.shard_table(args.dataset, args.shard, "filtered")),
                                  path_or(args.out, layout.shard_table(args.dataset, args.shard, "captioned")),
                                  cfg["caption"])
    log.info("captioned %d kept clips (%d without a caption)", kept, missing)
    return 0
