"""Decode throughput of the training loader: PyAV (reference) vs decord, on the loader's own access pattern.

Each item is what `VideoClipDataset.load` asks for: `plan_frames` picks num_frames source frames at
the training fps from a random start, and `longvid.video.decode_frames` opens the clip, seeks, decodes
and resizes them (cover + center crop), one clip per call, one thread (DataLoader workers are the
parallelism). The clip is an H.264 mp4 made as `split` makes clips (libx264 veryfast, crf 18,
yuv420p, faststart). Both backends must return identical pixels for every item; the ratio is printed,
nothing is asserted about time.

    python bench/decode.py [--seconds 20] [--size 320x240] [--src-fps 24] [--fps 8] [--items 6]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import ffmpeg
import numpy as np

from longvid.dataset.loader import plan_frames
from longvid.video import decode_frames, h264, run_ffmpeg


def make_clip(path: Path, seconds: float, width: int, height: int, fps: float) -> int:
    """A moving test pattern encoded like a split clip; returns its frame count."""
    src = ffmpeg.input(f"testsrc2=size={width}x{height}:rate={fps}:duration={seconds}", f="lavfi")
    run_ffmpeg(h264(src, path))
    return round(seconds * fps)


def run_items(decoder: str, path: Path, plans: list[np.ndarray], src_fps: float, height: int, width: int):
    return [decode_frames(path, idx, src_fps, height, width, decoder) for idx in plans]


def timed(fns: dict, repeats: int) -> dict[str, tuple[float, list]]:
    """Median seconds and the last result of each function; the functions take turns within every
    repeat, so a load change on the machine hits both sides alike."""
    times, results = {k: [] for k in fns}, {}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            results[k] = fn()
            times[k].append(time.perf_counter() - t)
    return {k: (statistics.median(times[k]), results[k]) for k in fns}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--size", default="320x240", help="source WxH")
    ap.add_argument("--src-fps", type=float, default=24)
    ap.add_argument("--fps", type=float, default=8, help="training fps (data.fps)")
    ap.add_argument("--items", type=int, default=6, help="clips (random starts) per measurement")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    # no resize: the target is the source size; resize: cover (120, 160) then crop to 96x160
    cases = [(49, h, w), (49, 96, 160), (145, h, w), (145, 96, 160)]
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.mp4"
        n_src = make_clip(clip, args.seconds, w, h, args.src_fps)
        print(f"clip {w}x{h}, {n_src} frames at {args.src_fps:g} fps, sampled at {args.fps:g} fps; "
              f"{args.items} items per measurement, median of {args.repeats}")
        for frames, th, tw in cases:
            rng = np.random.default_rng(0)
            plans = [plan_frames(n_src, args.src_fps, frames, args.fps, rng)[0] for _ in range(args.items)]
            fns = {d: partial(run_items, d, clip, plans, args.src_fps, th, tw) for d in ("pyav", "decord")}
            got = timed(fns, args.repeats)
            (t_ref, ref), (t_new, new) = got["pyav"], got["decord"]
            if not all(np.array_equal(a, b) for a, b in zip(ref, new)):
                raise SystemExit(f"{frames} frames at {th}x{tw}: PyAV and decord pixels differ")
            total = frames * args.items
            label = f"{frames:3d} frames -> {th}x{tw}" + ("" if (th, tw) == (h, w) else " (resize+crop)")
            print(f"{label:34s} reference pyav {total / t_ref:7.1f} frames/s | decord {total / t_new:7.1f} "
                  f"frames/s | decord/pyav = {t_ref / t_new:.2f}x  (pixels identical)")


if __name__ == "__main__":
    main()
