"""Materialise a dataset's source videos under data/raw/{dataset}/ and write its manifest.

The dataset's `source` section picks the adapter by `type`:

  synthetic   render captioned clips of moving shapes with known ground truth (the default dataset)
  local       a folder or glob of video files already on disk
  urls        http(s)/s3/gs URLs through fsspec: parallel, resumable, size/sha256-checked, atomic
  pixabay     list videos through the Pixabay API (key from $PIXABAY_API_KEY), then `urls`
  annotations metadata files of MiraData, Vript, OpenVid or Open-Sora-Plan turned into the manifest

Every key of each type is in src/longvid/schemas/dataset.schema.yaml. A video that cannot be fetched
becomes a manifest row with an `error`, and the run goes on with the others.
"""

from __future__ import annotations

import logging
from pathlib import Path

from longvid import layout
from longvid.stages import add_config_arguments, path_or, stage_config

log = logging.getLogger(__name__)


def add_arguments(p) -> None:
    add_config_arguments(p, "dataset", "fetch")
    p.add_argument("--out-dir", type=Path, help="where fetched videos are stored (default: data/raw/{dataset}/videos)")
    p.add_argument("--manifest", type=Path, help="output manifest (default: data/raw/{dataset}/manifest.jsonl)")


def run(args) -> int:
    from longvid.ingest.fetch import fetch
    from longvid.io import write_jsonl

    cfg = stage_config(args, "dataset", "fetch")
    manifest = path_or(args.manifest, layout.manifest(args.dataset))
    rows = fetch(cfg["source"], path_or(args.out_dir, layout.raw_dir(args.dataset) / "videos"))
    failed = [r for r in rows if r["error"]]
    for r in failed:
        log.warning("fetch %s: %s", r["source"], r["error"])
    write_jsonl(manifest, rows)
    log.info("manifest %s: %d videos, %d failed", manifest, len(rows), len(failed))
    return 0
