"""The manifest: one row per source video, written by `fetch`, read by `shard`/`probe`.

Row schema (JSONL, `data/raw/{dataset}/manifest.jsonl`):

    id        str   stable id: sha1 of the source URL/path (first 16 hex digits), so reruns and
                    re-listings give the same id and shard assignment
    source    str   where the video came from (URL, or the original local path)
    path      str   local file, relative to the repository root (or absolute)
    bytes     int   size on disk
    sha256    str   content checksum (hex), "" when the fetch failed
    captions  list  source captions, each {"text": str, "start": float|None, "end": float|None}
                    (seconds; None = whole video); [] when the source has none
    meta      dict  source-specific extras (ground truth of synthetic clips, annotation ids, …)
    error     str   "" when fetched; otherwise one line saying what went wrong
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from longvid.io import sha256_file

COLUMNS = ("id", "source", "path", "bytes", "sha256", "captions", "meta", "error")


def video_id(source: str) -> str:
    """Stable id of a video from its source URL/path."""
    return hashlib.sha1(source.encode()).hexdigest()[:16]


def row(source: str, path: str | os.PathLike, *, captions=None, meta=None, error: str = "",
        sha256: str | None = None) -> dict:
    """A manifest row; size and checksum are read from the file when it exists and none is given."""
    p = Path(path)
    ok = not error and p.is_file()
    return {
        "id": video_id(source),
        "source": source,
        "path": str(path),
        "bytes": p.stat().st_size if ok else 0,
        "sha256": (sha256 or sha256_file(p)) if ok else "",
        "captions": list(captions or []),
        "meta": dict(meta or {}),
        "error": error,
    }


def caption(text: str, start: float | None = None, end: float | None = None) -> dict:
    return {"text": text, "start": start, "end": end}
