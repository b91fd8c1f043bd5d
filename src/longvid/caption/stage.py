"""Attach captions to the kept clips of a shard.

Backends:
  passthrough  keep the source captions: those whose time span overlaps the clip (or that cover
               the whole video) become `caps`; the one overlapping most becomes `text`.
               Clips with no source caption are reported and get `caption_error`.

(A VLM backend behind an OpenAI-compatible endpoint plugs in here; see DESIGN.md.)
Rejected clips pass through unchanged, so the shard table stays complete.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from longvid.io import InputError, read_jsonl, write_jsonl

log = logging.getLogger(__name__)

BACKENDS = ("passthrough",)


def overlap(cap: dict, start: float, end: float) -> float:
    """Seconds of the clip [start, end) covered by a caption span; a span-less caption covers all."""
    if cap.get("start") is None or cap.get("end") is None:
        return end - start
    return max(0.0, min(end, cap["end"]) - max(start, cap["start"]))


def passthrough(clip: dict) -> dict:
    start, end = clip.get("start") or 0.0, clip.get("end") or 0.0
    scored = [(overlap(c, start, end), c["text"]) for c in clip.get("captions", []) if c.get("text", "").strip()]
    scored = [s for s in scored if s[0] > 0]
    if not scored:
        return {"caps": [], "text": "", "caption_source": "passthrough", "caption_error": "no source caption"}
    scored.sort(key=lambda s: -s[0])
    return {"caps": [t for _, t in scored], "text": scored[0][1], "caption_source": "passthrough",
            "caption_error": ""}


def add_arguments(p) -> None:
    p.add_argument("--clips", required=True, type=Path, help="filtered clip table (JSONL)")
    p.add_argument("--out", required=True, type=Path, help="output: clips with captions (JSONL)")
    p.add_argument("--params", default="{}", help="the dataset's `caption` config section, as JSON")


def run(args) -> int:
    cfg = {"backend": "passthrough", **json.loads(args.params)}
    if cfg["backend"] not in BACKENDS:
        raise InputError(f"caption.backend: unknown backend {cfg['backend']!r} (choose from {', '.join(BACKENDS)})")
    rows, missing = [], 0
    for clip in read_jsonl(args.clips):
        if clip.get("keep"):
            clip = {**clip, **passthrough(clip)}
            if clip["caption_error"]:
                missing += 1
                log.warning("caption %s: %s", clip["id"], clip["caption_error"])
        rows.append(clip)
    write_jsonl(args.out, rows)
    log.info("captioned %d kept clips (%d without a caption)", sum(bool(r.get("keep")) for r in rows), missing)
    return 0
