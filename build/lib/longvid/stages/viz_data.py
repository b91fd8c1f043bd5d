"""Write what the model sees: dataset items after frame sampling, resize and crop, back to 8-bit mp4
files with a JSON sidecar each (row id, caption, source frames used, fps). Items are picked with a
seed, so two runs show the same clips."""

from __future__ import annotations

from pathlib import Path


def add_arguments(p) -> None:
    p.add_argument("--jsonl", required=True, type=Path, help="dataset table, e.g. data/datasets/shapes/train.jsonl")
    p.add_argument("--root", type=Path, help="directory the rows' paths are relative to (default: the JSONL's)")
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
    from longvid.dataset.loader import VideoClipDataset
    from longvid.dataset.viz import visualize
    from longvid.io import InputError

    if args.num_items < 1:
        raise InputError(f"--num-items must be positive, got {args.num_items}")
    dataset = VideoClipDataset(args.jsonl, root=args.root, num_frames=args.num_frames, fps=args.fps,
                               height=args.height, width=args.width, text_key=args.text_key, seed=args.seed,
                               skip_frames=args.skip_frames, on_error=args.on_error)
    dataset.set_epoch(args.epoch)
    visualize(dataset, args.out_dir, args.num_items, args.seed)
    return 0
