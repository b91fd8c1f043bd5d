"""Split a dataset's manifest into fixed-size shards, the unit of every data job.

Assignment is deterministic (by video id), and a shard's manifest is rewritten only when its rows
change, so adding videos reruns only the shards they land in.
"""

from __future__ import annotations

import logging
from pathlib import Path

from longvid import layout
from longvid.stages import add_config_arguments, path_or, stage_config

log = logging.getLogger(__name__)


def add_arguments(p) -> None:
    add_config_arguments(p, "dataset", "shard")
    p.add_argument("--manifest", type=Path, help="dataset manifest (default: data/raw/{dataset}/manifest.jsonl)")
    p.add_argument("--out-dir", type=Path, help="default: data/shards/{dataset}")
    p.add_argument("--shards-json", type=Path, help="output: the shard list (default: {out-dir}/shards.json)")


def run(args) -> int:
    from longvid.ingest.shard import write_shards

    size = stage_config(args, "dataset", "shard")["shard_size"]
    out_dir = path_or(args.out_dir, layout.shards_dir(args.dataset))
    shards, videos, changed = write_shards(path_or(args.manifest, layout.manifest(args.dataset)), size, out_dir,
                                           path_or(args.shards_json, out_dir / "shards.json"))
    log.info("%d videos -> %d shards of at most %d (%d rewritten)", videos, shards, size, changed)
    return 0
