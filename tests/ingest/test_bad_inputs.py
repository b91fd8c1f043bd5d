"""Broken files each become one clear error row; good files (whatever their names) go through."""

import json
import subprocess
import sys
from pathlib import Path

import ffmpeg
import numpy as np
import pytest

from longvid.ingest import manifest, synthetic
from conftest import snakemake, write_config
from longvid.io import read_jsonl, write_jsonl
from longvid.video import encode_frames, run_ffmpeg

TRICKY_NAME = "we ird 'name' \"q\" $(touch PWNED).mp4"


def make_folder(d: Path) -> dict[str, str]:
    """Files and the error each must produce ('' = must be kept)."""
    d.mkdir()
    shots = synthetic.plan_video(np.random.default_rng(1), 1, (7.0, 7.0), 24)
    synthetic.render_video(d / "good.mp4", shots, 24, 64, 96)
    synthetic.render_video(d / TRICKY_NAME, shots, 24, 64, 96)
    (d / "zero.mp4").write_bytes(b"")
    (d / "text.mp4").write_text("this is not a video\n")
    full = (d / "good.mp4").read_bytes()
    run_ffmpeg(ffmpeg.input(str(d / "good.mp4")).output(str(d / "moov_at_end.mp4"), c="copy"))  # no faststart
    (d / "truncated.mp4").write_bytes((d / "moov_at_end.mp4").read_bytes()[: len(full) // 2])
    (d / "moov_at_end.mp4").unlink()
    (d / "cut_short.mp4").write_bytes(full[: len(full) // 2])  # index intact, data missing
    run_ffmpeg(ffmpeg.input("sine=frequency=440:duration=2", f="lavfi").output(str(d / "audio_only.mp4"), acodec="aac"))
    encode_frames(d / "one_frame.mp4", np.zeros((1, 64, 96, 3), np.uint8), 24)
    return {"good.mp4": "", TRICKY_NAME: "", "zero.mp4": "empty file", "text.mp4": "Invalid data",
            "truncated.mp4": "Invalid data", "cut_short.mp4": "truncated",
            "audio_only.mp4": "no video stream", "one_frame.mp4": "no clip"}


def longvid(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "longvid", *args], check=True, capture_output=True)


def test_each_broken_file_is_one_error_row_and_good_files_survive(tmp_path):
    expected = make_folder(tmp_path / "in")
    rows = [manifest.row(str(p), p) for p in sorted((tmp_path / "in").iterdir())]
    write_jsonl(tmp_path / "manifest.jsonl", rows)
    cfg = ["--dataset", "bad", "--shard", "s00000", "--configfile", str(write_config(tmp_path, {"bad": {
        "source": {"type": "local", "path": str(tmp_path / "in")}, "split": {"min_scene_seconds": 2, "fps": 8},
        "filter": {"min_frames": 49}}}))]
    longvid("probe", *cfg, "--manifest", str(tmp_path / "manifest.jsonl"), "--out", str(tmp_path / "probe.jsonl"))
    longvid("split", *cfg, "--probe", str(tmp_path / "probe.jsonl"), "--out", str(tmp_path / "clips.jsonl"),
            "--clip-dir", str(tmp_path / "clips"))
    longvid("filter", *cfg, "--clips", str(tmp_path / "clips.jsonl"), "--out", str(tmp_path / "filtered.jsonl"))

    by_source: dict[str, list[dict]] = {}
    for clip in read_jsonl(tmp_path / "filtered.jsonl"):
        by_source.setdefault(Path(clip["source_path"]).name, []).append(clip)
    assert set(by_source) == set(expected)
    for name, err in expected.items():
        clips = by_source[name]
        if err:
            assert len(clips) == 1, name
            assert err in clips[0]["error"], (name, clips[0]["error"])
            assert "\n" not in clips[0]["error"]
            assert clips[0]["keep"] is False
        else:
            assert [c["keep"] for c in clips] == [True], (name, clips)
            assert clips[0]["num_frames"] == 56  # 7 s at 8 fps
    assert not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()


@pytest.mark.slow
def test_workflow_on_a_broken_folder_completes_with_the_good_files(repo_copy, tmp_path):
    expected = make_folder(tmp_path / "in")
    (repo_copy / "config/datasets/broken.yaml").write_text(
        f"source: {{type: local, path: '{tmp_path / 'in'}'}}\n"
        "split: {fps: 8, min_scene_seconds: 2}\nfilter: {min_frames: 49}\n"
    )
    for f in ("one_frame", "good"):  # captions, so the good clips reach the dataset
        (tmp_path / "in" / f"{f}.txt").write_text("a caption")
    (tmp_path / "in" / TRICKY_NAME).with_suffix(".txt").write_text("another caption")
    snakemake(repo_copy, "data/datasets/broken/train.jsonl")
    rows = [json.loads(line) for f in ("train", "val")
            for line in (repo_copy / f"data/datasets/broken/{f}.jsonl").read_text().splitlines()]
    assert sorted(Path(r["source_path"]).name for r in rows) == sorted(["good.mp4", TRICKY_NAME])
    stats = json.loads((repo_copy / "data/datasets/broken/stats.json").read_text())
    assert stats["clips"]["rejected"] == len([e for e in expected.values() if e])
