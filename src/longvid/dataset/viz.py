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
import torch

from longvid.dataset.loader import VideoClipDataset, source_fps
from longvid.ingest.ffmpeg import encode_frames
from longvid.io import InputError, write_json

log = logging.getLogger(__name__)


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """(F, 3, H, W) in [-1, 1] -> (F, H, W, 3) uint8."""
    return ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


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


def add_arguments(p) -> None:
    p.add_argument("--jsonl", required=True, type=Path,
                   help="dataset table, e.g. data/datasets/shapes/train.jsonl")
    p.add_argument("--root", type=Path,
                   help="directory the rows' paths are relative to (default: the JSONL's)")
    p.add_argument("--out-dir", required=True, type=Path, help="where the mp4 + json pairs go")
    p.add_argument("--num-items", type=int, default=10)
    p.add_argument("--seed", type=int, default=0, help="picks the items and their temporal starts")
    p.add_argument("--epoch", type=int, default=0, help="the epoch whose temporal starts to show")
    p.add_argument("--num-frames", type=int, default=49, help="8N+1")
    p.add_argument("--fps", type=float, default=8)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--text-key", default="text")
    p.add_argument("--skip-frames", type=int, default=0)
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise")


def run(args) -> int:
    if args.num_items < 1:
        raise InputError(f"--num-items must be positive, got {args.num_items}")
    dataset = VideoClipDataset(args.jsonl, root=args.root, num_frames=args.num_frames, fps=args.fps,
                               height=args.height, width=args.width, text_key=args.text_key, seed=args.seed,
                               skip_frames=args.skip_frames, on_error=args.on_error)
    dataset.set_epoch(args.epoch)
    visualize(dataset, args.out_dir, args.num_items, args.seed)
    return 0
