"""The shapes world: the grammar and renderer of the embedded default dataset.

A shot is one object (shape, colour) moving in one direction across a plain background; its caption
is `caption_of(shot)`. The synthetic source (longvid.ingest.synthetic) renders videos of such shots,
and evaluation (longvid.evaluate.shapes_check) reads a prompt in this grammar back to check what a
generated video shows: both sides share this module, not each other.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from longvid.video import encode_frames

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


def render_shot(shot: dict, n_frames: int, h: int, w: int, size: float = 0.125) -> np.ndarray:
    """Frames (n, h, w, 3) of one shot: the object, of radius `size` x the short side, crosses the
    frame in its direction and stops half a radius short of the border at either end."""
    frames = np.empty((n_frames, h, w, 3), np.uint8)
    frames[:] = BACKGROUNDS[shot["background"]]
    r = min(h, w) * size
    vx, vy = DIRECTIONS[shot["direction"]]
    span_x, span_y = (w - 3 * r), (h - 3 * r)
    for i in range(n_frames):
        p = i / max(n_frames - 1, 1) - 0.5  # -0.5 .. 0.5 along the path
        cx = w / 2 + vx * p * span_x
        cy = h / 2 + vy * p * span_y
        frames[i][_mask(shot["shape"], h, w, cx, cy, r)] = COLORS[shot["color"]]
    return frames


def render_video(path: Path, shots: list[dict], fps: float, h: int, w: int, size: float = 0.125) -> None:
    frames = np.concatenate([render_shot(s, s["end_frame"] - s["start_frame"], h, w, size) for s in shots])
    encode_frames(path, frames, fps)
