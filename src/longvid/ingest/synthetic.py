"""The embedded default dataset: short videos of moving shapes with exact, known captions.

Each video is a few shots; each shot has its own background colour (so a scene detector has a real
cut to find) and one object of a known shape and colour moving in a known direction. The ground truth
is kept in the manifest (`meta.shots`) and as time-stamped source captions, so later stages can check
cuts, captions and generated samples against it.

Source config keys: type: synthetic, num_videos, shots_per_video, shot_seconds [min, max], fps,
width, height, seed (defaults and meanings in longvid/schemas/dataset.schema.yaml).
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlencode

import numpy as np

from longvid import config as lvconfig
from longvid.ingest import manifest
from longvid.video import encode_frames

log = logging.getLogger(__name__)

SHAPES = ("circle", "square", "triangle")
COLORS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230), "yellow": (235, 215, 40)}
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
# Backgrounds far apart in hue and brightness, so every shot boundary is a clear content cut.
BACKGROUNDS = {"black": (10, 10, 10), "white": (235, 235, 235), "gray": (120, 120, 120),
               "teal": (20, 110, 110), "purple": (90, 30, 110), "brown": (110, 70, 30)}


def caption_of(shot: dict) -> str:
    return f"a {shot['color']} {shot['shape']} moves {shot['direction']} on a {shot['background']} background"


def _mask(shape: str, h: int, w: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    # triangle pointing up: inside the band below the two slanted edges
    return (dy <= r) & (dy >= -r) & (np.abs(dx) <= (dy + r) / 2)


def render_shot(shot: dict, n_frames: int, h: int, w: int) -> np.ndarray:
    """Frames (n, h, w, 3) of one shot: the object crosses most of the frame in its direction."""
    frames = np.empty((n_frames, h, w, 3), np.uint8)
    frames[:] = BACKGROUNDS[shot["background"]]
    r = min(h, w) / 8
    vx, vy = DIRECTIONS[shot["direction"]]
    span_x, span_y = (w - 4 * r), (h - 4 * r)
    for i in range(n_frames):
        p = i / max(n_frames - 1, 1) - 0.5  # -0.5 .. 0.5 along the path
        cx = w / 2 + vx * p * span_x
        cy = h / 2 + vy * p * span_y
        frames[i][_mask(shot["shape"], h, w, cx, cy, r)] = COLORS[shot["color"]]
    return frames


def plan_video(rng: np.random.Generator, n_shots: int, seconds: tuple[float, float], fps: float) -> list[dict]:
    shots, start, last_bg = [], 0, None
    for _ in range(n_shots):
        background = rng.choice([b for b in BACKGROUNDS if b != last_bg])
        n = int(round(rng.uniform(*seconds) * fps))
        shots.append({
            "shape": str(rng.choice(SHAPES)), "color": str(rng.choice(list(COLORS))),
            "direction": str(rng.choice(list(DIRECTIONS))), "background": str(background),
            "start_frame": start, "end_frame": start + n,
        })
        start, last_bg = start + n, background
    return shots


def render_video(path: Path, shots: list[dict], fps: float, h: int, w: int) -> None:
    frames = np.concatenate([render_shot(s, s["end_frame"] - s["start_frame"], h, w) for s in shots])
    encode_frames(path, frames, fps)


def fetch(source: dict, out_dir: Path) -> list[dict]:
    source = lvconfig.source(source)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fps, h, w = float(source["fps"]), source["height"], source["width"]
    seconds = tuple(source["shot_seconds"])
    rng = np.random.default_rng(source["seed"])
    rows = []
    for i in range(source["num_videos"]):
        shots = plan_video(rng, source["shots_per_video"], seconds, fps)
        # Every generator setting is part of the source name, so the id (and file) changes with them.
        src = f"synthetic://shapes/{i:04d}?{urlencode(sorted((k, str(v)) for k, v in source.items()))}"
        path = out_dir / f"{manifest.video_id(src)}.mp4"
        if not path.exists():  # deterministic given the settings: an existing file is the same video
            tmp = path.with_name(f".{path.name}.tmp.mp4")
            render_video(tmp, shots, fps, h, w)
            tmp.replace(path)
        caps = [manifest.caption(caption_of(s), s["start_frame"] / fps, s["end_frame"] / fps) for s in shots]
        rows.append(manifest.row(src, path,
                                 captions=caps, meta={"fps": fps, "shots": shots}))
    log.info("synthetic: %d videos in %s", len(rows), out_dir)
    return rows
