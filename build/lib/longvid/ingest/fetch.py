"""Fetch dispatch: a dataset's `source.type` picks the adapter module, which returns manifest rows
(see longvid.ingest.manifest); a video that cannot be fetched becomes a row with an `error`."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

from longvid.io import InputError, write_jsonl

log = logging.getLogger(__name__)

ADAPTERS = {
    "synthetic": "longvid.ingest.synthetic",
    "local": "longvid.ingest.sources.local",
    "urls": "longvid.ingest.sources.urls",
    "pixabay": "longvid.ingest.sources.pixabay",
    "annotations": "longvid.ingest.sources.annotations",
}


def fetch(source: dict, out_dir: Path) -> list[dict]:
    kind = source.get("type")
    if kind not in ADAPTERS:
        raise InputError(f"source.type: unknown source {kind!r} (choose from {', '.join(ADAPTERS)})")
    adapter = importlib.import_module(ADAPTERS[kind])
    return adapter.fetch(source, out_dir)


def fetch_dataset(cfg: dict, out_dir: Path, manifest: Path, name: str) -> int:
    """The fetch stage: the dataset's videos into `out_dir`, one manifest row each into `manifest`."""
    rows = fetch(cfg["source"], out_dir)
    failed = [r for r in rows if r["error"]]
    for r in failed:
        log.warning("fetch %s: %s", r["source"], r["error"])
    write_jsonl(manifest, rows)
    log.info("%s: manifest %s, %d videos, %d failed", name, manifest, len(rows), len(failed))
    return 0
