"""DAG cost at scale: `snakemake -n` wall time and job count for a 500k-video dataset.

Writes a synthetic 500k-row manifest (no video files: a dry run never opens them), runs the real
shard checkpoint, then times the dry run of the whole data half. The reference is the same dry run
for a 1-shard dataset in the same checkout, i.e. Snakemake's fixed start-up cost; the ratio says what
the 500k DAG adds on top. Goal: seconds, not minutes.

    python bench/dag.py [--videos 500000]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from conftest import copy_repo  # noqa: E402  (the test suite's "copy the checkout" helper)

from longvid.ingest import manifest  # noqa: E402
from longvid.io import dumps_row  # noqa: E402


def write_dataset(repo: Path, name: str, videos: int) -> None:
    (repo / "config/datasets" / f"{name}.yaml").write_text(f"source: {{type: local, path: /nonexistent/{name}}}\n")
    raw = repo / "data/raw" / name
    raw.mkdir(parents=True)
    with open(raw / "manifest.jsonl", "w") as f:
        for i in range(videos):
            src = f"s3://bucket/{name}/{i:07d}.mp4"
            f.write(dumps_row({"id": manifest.video_id(src), "source": src, "path": f"data/raw/{name}/{i}.mp4",
                               "bytes": 1, "sha256": "", "captions": [], "meta": {}, "error": ""}) + "\n")


def snakemake(repo: Path, *args: str) -> tuple[float, str]:
    t = time.perf_counter()
    proc = subprocess.run(["snakemake", "--cores", "2", *args], cwd=repo, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stdout[-2000:] + proc.stderr[-4000:])
    return time.perf_counter() - t, proc.stdout


def jobs(stdout: str) -> int:
    return int(re.search(r"^total\s+(\d+)$", stdout, re.M)[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=500_000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    try:
        repo = copy_repo(tmp / "repo")
        write_dataset(repo, "big", args.videos)
        write_dataset(repo, "small", 10)
        t_shard, _ = snakemake(repo, "data/shards/big/shards.json", "data/shards/small/shards.json")
        t_small, out_small = snakemake(repo, "-n", "data/datasets/small/train.jsonl")
        t_big, out_big = snakemake(repo, "-n", "data/datasets/big/train.jsonl")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{args.videos} videos -> {jobs(out_big)} jobs (shard checkpoint ran in {t_shard:.1f} s)")
    print(f"reference dry run, 10 videos ({jobs(out_small)} jobs): {t_small:6.2f} s")
    print(f"dry run, {args.videos} videos            : {t_big:6.2f} s")
    print(f"ratio big/reference = {t_big / t_small:.2f}x")


if __name__ == "__main__":
    main()
