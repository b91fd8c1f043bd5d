"""Write what the model sees: N dataset items after frame sampling, resize and crop, de-normalised
back to 8-bit video, as mp4 files with a JSON sidecar each (row id, caption, source frames used,
source and target fps). Items are picked with a seed, so two runs show the same clips.

Replaces the research code's `viz_dataloader.py` (hard-coded dataset and output path, ipdb stop).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from longvid.dataset.loader import VideoClipDataset, source_fps
from longvid.io import InputError, write_json
from longvid.video import encode_frames, to_uint8

log = logging.getLogger(__name__)


def visualize(dataset: VideoClipDataset, out_dir: str | os.PathLike, num_items: int = 10,
              seed: int = 0) -> list[Path]:
    """Write `num_items` items chosen with `seed`; return the mp4 paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    picks = np.random.default_rng(seed).permutation(len(dataset))[:num_items]
    written = []
    for n, index in enumerate(picks.tolist()):
        item = dataset[index]
        frames = to_uint8(item["video"])
        if frames.shape[1] % 2 or frames.shape[2] % 2:
            raise InputError(f"height and width must be even to write H.264 (yuv420p), got "
                             f"{frames.shape[1]}x{frames.shape[2]}")
        row = dataset.rows[item["index"]]
        stem = out_dir / f"{n:04d}_{item['id']}"
        encode_frames(stem.with_suffix(".mp4"), frames, dataset.fps)
        write_json(stem.with_suffix(".json"), {
            "id": item["id"], "index": item["index"], "requested_index": index,
            "line": dataset.lines[item["index"]], "path": row["path"], "text": item["text"],
            "frame_indices": item["frame_indices"].tolist(), "real_frames": item["num_frames"],
            "padded": item["padded"], "source_fps": source_fps(row), "fps": dataset.fps,
            "size": list(frames.shape[:3]), "epoch": dataset.epoch, "seed": dataset.seed,
        })
        written.append(stem.with_suffix(".mp4"))
    log.info("wrote %d clips as the model sees them to %s", len(written), out_dir)
    return written
