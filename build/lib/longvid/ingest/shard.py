"""Split a dataset manifest into shards: the unit of every per-shard data job.

A video goes to shard `int(id, 16) % n_shards` with `n_shards = ceil(videos / shard_size)`, so
assignment is deterministic and independent of listing order. Writes `shards.json` (the list the
Snakemake checkpoint reads) and `{shard}/manifest.jsonl` per shard. A shard manifest is rewritten
only when its rows change: an unchanged shard keeps its mtime, so Snakemake does not redo its jobs.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from longvid.io import dumps_row, read_jsonl, write_json, write_text

log = logging.getLogger(__name__)


def shard_name(k: int) -> str:
    return f"s{k:05d}"


def assign(rows: list[dict], shard_size: int) -> dict[str, list[dict]]:
    n = max(1, math.ceil(len(rows) / shard_size))
    shards: dict[str, list[dict]] = {shard_name(k): [] for k in range(n)}
    for row in sorted(rows, key=lambda r: r["id"]):
        shards[shard_name(int(row["id"], 16) % n)].append(row)
    return shards


def write_if_changed(path: Path, text: str) -> bool:
    if path.exists() and path.read_text() == text:
        return False
    write_text(path, text)
    return True


def write_shards(cfg: dict, manifest: Path, out_dir: Path, shards_json: Path, name: str) -> int:
    """The shard stage: every shard's manifest (rewritten only when its rows changed) and the list."""
    shard_size = cfg["shard_size"]
    rows = list(read_jsonl(manifest))
    shards = assign(rows, shard_size)
    changed = sum(
        write_if_changed(out_dir / name / "manifest.jsonl", "".join(dumps_row(r) + "\n" for r in part))
        for name, part in shards.items()
    )
    write_json(shards_json, {"shards": list(shards), "videos": len(rows), "shard_size": shard_size})
    log.info("%s: %d videos -> %d shards of at most %d (%d rewritten)", name, len(rows), len(shards), shard_size,
             changed)
    return 0
