"""Probe throughput: longvid's probe stage vs the research code's method, on the same files.

Reference ("ffprobe-threads"): one `ffprobe -count_frames` subprocess per file in a thread pool, as
the research code's add_fps.py did (plus -count_frames, so both sides report decoded frames).
Candidate ("longvid"): longvid.ingest.probe — PyAV decoding in a process pool.
Both must give the same decoded frame count for every file; the ratio is printed, nothing is asserted
about time.

    python bench/probe.py [--videos 48] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from longvid.ingest import synthetic
from longvid.ingest.probe import probe_rows
from longvid.io import RowJournal


def ffprobe_frames(path: str) -> int:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_frames", "-show_entries",
         "stream=nb_read_frames,width,height,duration,r_frame_rate,avg_frame_rate,codec_name,pix_fmt",
         "-of", "json", path], capture_output=True, text=True, check=True).stdout
    return int(json.loads(out)["streams"][0]["nb_read_frames"])


def reference(paths: list[str], workers: int) -> list[int]:
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(ffprobe_frames, paths))


def candidate(paths: list[str], workers: int, out: Path) -> list[int]:
    journal = RowJournal(out)
    rows = [{"id": str(i), "path": p} for i, p in enumerate(paths)]
    probe_rows(rows, journal, workers)
    journal.publish([r["id"] for r in rows])
    return [journal.rows[r["id"]]["num_frames"] for r in rows]


def timed(fn, repeats: int) -> tuple[float, list[int]]:
    times, result = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=48)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = synthetic.fetch({"type": "synthetic", "num_videos": args.videos, "shots_per_video": 2,
                                "shot_seconds": [4, 6], "seed": 11}, tmp / "videos")
        paths = [r["path"] for r in rows]
        frames = sum(r["meta"]["shots"][-1]["end_frame"] for r in rows)
        t_ref, n_ref = timed(lambda: reference(paths, args.workers), args.repeats)
        t_new, n_new = timed(lambda: candidate(paths, args.workers, tmp / "probe.jsonl"), args.repeats)
    if n_ref != n_new:
        raise SystemExit(f"frame counts differ: ffprobe {n_ref} vs longvid {n_new}")
    print(f"{len(paths)} videos, {frames} frames, {args.workers} workers; decoded frame counts identical")
    print(f"reference ffprobe-threads : {len(paths) / t_ref:8.1f} videos/s  ({t_ref:.2f} s)")
    print(f"longvid probe             : {len(paths) / t_new:8.1f} videos/s  ({t_new:.2f} s)")
    print(f"speed-up longvid/ffprobe-threads = {t_ref / t_new:.2f}x")


if __name__ == "__main__":
    main()
