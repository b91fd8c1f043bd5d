"""Does a video show what a `shapes` prompt asked for? The synthetic dataset's captions follow one
grammar (longvid.shapes.caption_of), so for those prompts the ground truth is known:
the object's colour and the direction it moves in.

The check works on pixels: the background is the median colour of the frame border (the generator
never lets the object touch it), foreground pixels are those far from it, their colour is the
nearest of the generator's palette, and the direction is the sign of the larger component of the
foreground centroid's least-squares velocity. It is run on the real validation clips too, where it
must agree with the captions: that is what makes a failure on samples mean something.
"""

from __future__ import annotations

import re

import numpy as np

from longvid.shapes import BACKGROUNDS, COLORS, DIRECTIONS, SHAPES

PROMPT = re.compile(rf"^a ({'|'.join(COLORS)}) ({'|'.join(SHAPES)}) moves ({'|'.join(DIRECTIONS)}) "
                    rf"on an? ({'|'.join(BACKGROUNDS)}) background$")
FOREGROUND_DISTANCE = 60.0  # RGB distance from the background that makes a pixel foreground
PALETTE_DISTANCE = 90.0  # farther than this from every palette colour: not the object
MIN_FOREGROUND = 0.005  # share of pixels: less than this and there is no object to speak of
MIN_TRAVEL = 0.1  # of the frame size along the motion axis, over the whole clip


def expected(prompt: str) -> dict | None:
    """{"color", "shape", "direction"} for a prompt in the synthetic grammar, else None."""
    m = PROMPT.match(prompt.strip().lower())
    return None if m is None else {"color": m[1], "shape": m[2], "direction": m[3]}


def border_color(frame: np.ndarray) -> np.ndarray:
    border = np.concatenate([frame[0], frame[-1], frame[:, 0], frame[:, -1]]).astype(np.float32)
    return np.median(border, axis=0)


def palette_labels(pixels: np.ndarray) -> np.ndarray:
    """Index into COLORS of each (N, 3) pixel, or -1 where none is near."""
    palette = np.array(list(COLORS.values()), np.float32)
    d = np.linalg.norm(pixels[:, None, :] - palette[None], axis=-1)
    labels = d.argmin(axis=1)
    labels[d.min(axis=1) > PALETTE_DISTANCE] = -1
    return labels


def observe(frames: np.ndarray) -> dict:
    """The object's colour and direction as seen in a uint8 video (F, H, W, 3)."""
    f, h, w, _ = frames.shape
    names = list(COLORS)
    votes = np.zeros(len(names), np.int64)
    masks = []
    for frame in frames.astype(np.float32):
        fg = np.linalg.norm(frame - border_color(frame), axis=-1) > FOREGROUND_DISTANCE
        labels = np.full((h, w), -1)
        labels[fg] = palette_labels(frame[fg])
        votes += np.bincount(labels[labels >= 0], minlength=len(names))
        masks.append(labels)
    if votes.sum() < MIN_FOREGROUND * f * h * w:
        return {"color": None, "direction": None, "foreground": float(votes.sum() / (f * h * w))}
    color = int(votes.argmax())
    centroids, times = [], []
    yy, xx = np.mgrid[0:h, 0:w]
    for t, labels in enumerate(masks):
        sel = labels == color
        if sel.sum() >= MIN_FOREGROUND * h * w:
            centroids.append((xx[sel].mean(), yy[sel].mean()))
            times.append(t)
    return {"color": names[color], "direction": direction_of(np.array(times), np.array(centroids), h, w),
            "foreground": float(votes.sum() / (f * h * w))}


def direction_of(times: np.ndarray, centroids: np.ndarray, h: int, w: int) -> str | None:
    """The direction whose axis carries the larger fitted travel, if it travels far enough."""
    if len(times) < 2:
        return None
    span = times[-1] - times[0]
    travel_x = np.polyfit(times, centroids[:, 0], 1)[0] * span / w
    travel_y = np.polyfit(times, centroids[:, 1], 1)[0] * span / h
    if max(abs(travel_x), abs(travel_y)) < MIN_TRAVEL:
        return None
    if abs(travel_x) >= abs(travel_y):
        return "right" if travel_x > 0 else "left"
    return "down" if travel_y > 0 else "up"


def check(prompt: str, frames: np.ndarray) -> dict | None:
    """Expected vs observed colour and direction, or None when the prompt is not a shapes caption."""
    want = expected(prompt)
    if want is None:
        return None
    seen = observe(frames)
    return {"expected": {"color": want["color"], "direction": want["direction"]}, **seen,
            "color_ok": seen["color"] == want["color"], "direction_ok": seen["direction"] == want["direction"]}
