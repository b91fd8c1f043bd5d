"""The passthrough caption backend: a clip keeps the source captions whose time span overlaps it
(or that cover the whole video) as `caps`, and the one overlapping most as `text`. A clip with no
source caption gets `caption_error` instead. Rejected clips pass through unchanged, so the shard
table stays complete."""

from __future__ import annotations

import logging
from pathlib import Path

from longvid.io import InputError, read_jsonl, write_jsonl

log = logging.getLogger(__name__)


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


def caption_shard(cfg: dict, clips: Path, out: Path, name: str) -> int:
    """The caption stage: the kept clips of `clips` captioned, into `out`."""
    cfg = cfg["caption"]
    if cfg["backend"] != "passthrough":
        raise InputError(f"caption.backend: {cfg['backend']!r} is not implemented")
    rows, kept, missing = [], 0, 0
    for clip in read_jsonl(clips):
        if clip.get("keep"):
            kept += 1
            clip = {**clip, **passthrough(clip)}
            if clip["caption_error"]:
                missing += 1
                log.warning("caption %s: %s", clip["id"], clip["caption_error"])
        rows.append(clip)
    write_jsonl(out, rows)
    log.info("%s: captioned %d kept clips (%d without a caption)", name, kept, missing)
    return 0
