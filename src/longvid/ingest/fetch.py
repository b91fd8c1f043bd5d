"""Fetch dispatch: a dataset's `source.type` picks the adapter module, which returns manifest rows
(see longvid.ingest.manifest); a video that cannot be fetched becomes a row with an `error`."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

from longvid.io import InputError

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
