"""Score every clip and decide keep/reject, recording why.

Scores (all kept as columns, so thresholds can change without recomputing anything upstream):
  frames_at_fps  frames the clip yields at the training fps (what the model can sample from)
  short_side     min(width, height)
  aspect         width / height
  motion         mean optical-flow magnitude (Farneback, weight-free) in pixels per frame at the
                 training fps, measured on frames scaled to 128 px on the short side

A clip is kept when every check passes; `reject_reasons` lists each failed check with its value, so
"why is this clip missing" has an answer in the table. The model needs 8N+1 frames (49, 145, ...):
`min_frames` must have that form (longvid.config checks it), and clips shorter than it are rejected rather than padded.
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from longvid.io import read_jsonl, write_jsonl

log = logging.getLogger(__name__)

ANALYSIS_SHORT_SIDE = 128


def motion_score(path: str, fps: float, target_fps: float, samples: int) -> float:
    """Mean Farneback flow magnitude between frame pairs one training-fps step apart."""
    import av
    import cv2

    step = max(1, round(fps / target_fps))
    with av.open(path) as container:
        frames = [f.to_ndarray(format="gray") for f in container.decode(video=0)]
    if len(frames) <= step:
        return 0.0
    starts = np.linspace(0, len(frames) - 1 - step, num=min(samples, len(frames) - step)).round().astype(int)
    h, w = frames[0].shape
    scale = ANALYSIS_SHORT_SIDE / min(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    mags = []
    for i in starts:
        a = cv2.resize(frames[i], size, interpolation=cv2.INTER_AREA)
        b = cv2.resize(frames[i + step], size, interpolation=cv2.INTER_AREA)
        flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        mags.append(float(np.linalg.norm(flow, axis=-1).mean()))
    return float(np.mean(mags))


def score(clip: dict, cfg: dict) -> dict:
    if clip.get("error"):
        return {"keep": False, "reject_reasons": [f"error: {clip['error']}"]}
    fps = clip["fps"] or cfg["fps"]
    scores = {
        "frames_at_fps": math.floor(clip["num_frames"] * cfg["fps"] / fps + 1e-6),
        "short_side": min(clip["width"], clip["height"]),
        "aspect": round(clip["width"] / clip["height"], 4),
    }
    try:
        scores["motion"] = round(motion_score(clip["path"], fps, cfg["fps"], cfg["motion_samples"]), 4)
    except Exception as e:  # an undecodable clip is rejected with the reason, not a crash
        return {**scores, "motion": None, "keep": False, "reject_reasons": [f"motion: {type(e).__name__}: {e}"]}
    checks = [
        (scores["frames_at_fps"] >= cfg["min_frames"], f"frames {scores['frames_at_fps']} < {cfg['min_frames']}"),
        (cfg["max_frames"] is None or scores["frames_at_fps"] <= cfg["max_frames"],
         f"frames {scores['frames_at_fps']} > {cfg['max_frames']}"),
        (scores["short_side"] >= cfg["min_short_side"], f"short side {scores['short_side']} < {cfg['min_short_side']}"),
        (cfg["min_aspect"] <= scores["aspect"] <= cfg["max_aspect"],
         f"aspect {scores['aspect']} outside [{cfg['min_aspect']}, {cfg['max_aspect']}]"),
        (scores["motion"] >= cfg["min_motion"], f"motion {scores['motion']} < {cfg['min_motion']}"),
        (cfg["max_motion"] is None or scores["motion"] <= cfg["max_motion"],
         f"motion {scores['motion']} > {cfg['max_motion']}"),
    ]
    reasons = [msg for ok, msg in checks if not ok]
    return {**scores, "keep": not reasons, "reject_reasons": reasons}


def _score_row(args: tuple[dict, dict]) -> dict:
    clip, cfg = args
    return {**clip, **score(clip, cfg)}


def filter_shard(cfg: dict, clips: Path, out: Path, workers: int, name: str) -> int:
    """The filter stage: score every clip of `clips` and keep or reject it, into `out`."""
    rows = list(read_jsonl(clips))
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        rows = list(pool.map(_score_row, [(c, cfg["filter"]) for c in rows], chunksize=4))
    write_jsonl(out, rows)
    log.info("%s: kept %d of %d clips", name, sum(r["keep"] for r in rows), len(rows))
    return 0
