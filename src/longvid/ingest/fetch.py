"""Materialise a dataset's source videos under data/raw/{dataset}/ and write its manifest.

The `source` section of the dataset config picks the adapter by `type`:

  synthetic   render captioned clips of moving shapes with known ground truth (the default dataset)
  local       a folder or glob of video files already on disk
  urls        http(s)/s3/gs URLs through fsspec: parallel, resumable, size/sha256-checked, atomic
  pixabay     list videos through the Pixabay API (key from $PIXABAY_API_KEY), then `urls`
  annotations metadata files of MiraData, Vript, OpenVid or Open-Sora-Plan turned into the manifest

Each adapter returns manifest rows (see longvid.ingest.manifest); a video that cannot be fetched
becomes a row with an `error`, and the run goes on with the others.
"""

from __future__ import annotations

import importlib
import json
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


def add_arguments(p) -> None:
    p.add_argument("--source", required=True, help="the dataset's `source` config section, as JSON")
    p.add_argument("--out-dir", required=True, type=Path, help="where fetched videos are stored")
    p.add_argument("--manifest", required=True, type=Path, help="output manifest (JSONL)")


def run(args) -> int:
    rows = fetch(json.loads(args.source), args.out_dir)
    failed = [r for r in rows if r["error"]]
    for r in failed:
        log.warning("fetch %s: %s", r["source"], r["error"])
    write_jsonl(args.manifest, rows)
    log.info("manifest %s: %d videos, %d failed", args.manifest, len(rows), len(failed))
    return 0
