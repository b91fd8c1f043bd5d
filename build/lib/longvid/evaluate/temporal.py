"""Tier-1 temporal metrics of one video, from its pixels alone (no pretrained weights).

* flicker: mean absolute difference between consecutive frames, on the 0-255 scale (VBench's
  "temporal flickering" reports 1 - this / 255). Lower is steadier; a frozen video scores 0, so read
  it together with motion.
* motion: mean optical-flow magnitude in pixels per frame (Farneback, OpenCV), at the video's own
  resolution. Diffusion models under-trained on long clips tend to collapse to still videos: this
  and `static_fraction` make that visible.
* warp_error: how well frame t+1 warped back along the flow reproduces frame t, mean absolute error
  in [0, 1] over pixels that the forward-backward flow check says are visible in both frames
  (Lai et al. 2018's temporal warping error, with Sundaram et al.'s occlusion test). Low means motion
  is explained by moving content, not by things appearing and vanishing.
* static_fraction: share of consecutive frame pairs that are practically identical: fewer than
  STATIC_PIXELS of the pixels change by more than STATIC_LEVELS grey levels (compression noise
  stays under that; a small object moving one pixel does not).
"""

from __future__ import annotations

import cv2
import numpy as np

STATIC_LEVELS = 10
STATIC_PIXELS = 0.001


def gray(frames: np.ndarray) -> np.ndarray:
    return np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])


def flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dense flow (H, W, 2) from grey frame a to b: pixel p of a moves to p + flow[p] in b."""
    win = max(5, min(15, min(a.shape) // 4 | 1))  # small frames need a small window
    return cv2.calcOpticalFlowFarneback(a, b, None, pyr_scale=0.5, levels=3, winsize=win, iterations=3,
                                        poly_n=5, poly_sigma=1.1, flags=0)


def sample_at(image: np.ndarray, field: np.ndarray) -> np.ndarray:
    """`image` read at positions p + field[p] (bilinear); used to warp frames and flows."""
    h, w = field.shape[:2]
    xx, yy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(image, xx + field[..., 0], yy + field[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def visible_mask(fwd: np.ndarray, bwd: np.ndarray) -> np.ndarray:
    """Pixels whose forward flow lands inside the frame and comes back along the backward flow."""
    h, w = fwd.shape[:2]
    xx, yy = np.meshgrid(np.arange(w), np.arange(h))
    x, y = xx + fwd[..., 0], yy + fwd[..., 1]
    inside = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
    back = sample_at(bwd, fwd)
    err = np.sum((fwd + back) ** 2, axis=-1)
    tolerance = 0.01 * (np.sum(fwd**2, axis=-1) + np.sum(back**2, axis=-1)) + 0.5
    return inside & (err <= tolerance)


def temporal_metrics(frames: np.ndarray) -> dict[str, float]:
    """The four metrics of a uint8 video (F, H, W, 3); F >= 2."""
    if frames.ndim != 4 or frames.shape[0] < 2 or frames.shape[-1] != 3:
        raise ValueError(f"expected (F >= 2, H, W, 3) frames, got {frames.shape}")
    f32 = frames.astype(np.float32)
    diff = np.abs(np.diff(f32, axis=0))
    mad = diff.mean(axis=(1, 2, 3))
    changed = (diff.max(axis=-1) > STATIC_LEVELS).mean(axis=(1, 2))
    g = gray(frames)
    magnitudes, warp_errors = [], []
    for t in range(len(g) - 1):
        fwd, bwd = flow(g[t], g[t + 1]), flow(g[t + 1], g[t])
        magnitudes.append(float(np.linalg.norm(fwd, axis=-1).mean()))
        mask = visible_mask(fwd, bwd)
        if mask.any():
            warped = sample_at(f32[t + 1], fwd)
            warp_errors.append(float(np.abs(warped - f32[t])[mask].mean() / 255.0))
    return {
        "flicker": float(mad.mean()),
        "motion": float(np.mean(magnitudes)),
        "warp_error": float(np.mean(warp_errors)) if warp_errors else float("nan"),
        "static_fraction": float((changed < STATIC_PIXELS).mean()),
    }
