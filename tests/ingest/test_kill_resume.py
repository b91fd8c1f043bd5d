"""A data job SIGKILLed mid-shard and rerun loses nothing, duplicates nothing, redoes nothing."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_config

from longvid.ingest import synthetic
from longvid.ingest.probe import probe_file
from longvid.io import read_jsonl, write_jsonl

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def probed_shard(tmp_path_factory):
    d = tmp_path_factory.mktemp("shard")
    rows = synthetic.fetch({"type": "synthetic", "num_videos": 8, "shots_per_video": 3, "seed": 3}, d / "videos")
    write_jsonl(d / "probe.jsonl", [{**r, **probe_file(r["path"])} for r in rows])
    return d / "probe.jsonl"


def split_cmd(probe: Path, out: Path) -> list[str]:
    config = write_config(probe.parent, {"k": {"source": {"type": "synthetic"}, "split": {"fps": 8}}})
    return [sys.executable, "-m", "longvid", "split", "--dataset", "k", "--configfile", str(config),
            "--shard", "s00000", "--probe", str(probe), "--out", str(out / "clips.jsonl"),
            "--clip-dir", str(out / "clips"), "--workers", "1"]


def spans(table: Path) -> list[tuple]:
    return [(c["id"], c["start_frame"], c["end_frame"], c["num_frames"]) for c in read_jsonl(table)]


def test_sigkill_mid_shard_then_rerun(probed_shard, tmp_path):
    reference = tmp_path / "uninterrupted"
    subprocess.run(split_cmd(probed_shard, reference), check=True, capture_output=True)

    out = tmp_path / "killed"
    journal = out / ".clips.jsonl.journal"
    # its own process group, killed whole, as Slurm or a node failure would: workers included
    proc = subprocess.Popen(split_cmd(probed_shard, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and (not journal.exists() or len(journal.read_text().splitlines()) < 3):
        time.sleep(0.05)  # header + 2 finished videos
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "clips.jsonl").exists(), "a killed job must not leave a complete-looking output"
    done = [json.loads(line) for line in journal.read_text().splitlines()[1:] if line.endswith("}")]
    assert 2 <= len(done) < 8
    finished = {c["path"]: Path(c["path"]).stat().st_mtime_ns for r in done for c in r["clips"]}

    subprocess.run(split_cmd(probed_shard, out), check=True, capture_output=True)
    assert spans(out / "clips.jsonl") == spans(reference / "clips.jsonl")
    ids = [c["id"] for c in read_jsonl(out / "clips.jsonl")]
    assert len(ids) == len(set(ids)) == 24
    assert {p: Path(p).stat().st_mtime_ns for p in finished} == finished, "finished clips were cut again"
    assert sorted(p.name for p in (out / "clips").glob("*.mp4")) == sorted(f"{i}.mp4" for i in ids)
    assert not journal.exists()
