"""Broken files each become one clear error row; good files (whatever their names) go through."""

import subprocess
from pathlib import Path

import numpy as np

from longvid.ingest import manifest, synthetic
from longvid.ingest.ffmpeg import encode_frames, run as ffmpeg
from longvid.io import read_jsonl, write_jsonl

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
    ffmpeg(["-i", str(d / "good.mp4"), "-c", "copy", str(d / "moov_at_end.mp4")])  # no faststart
    (d / "truncated.mp4").write_bytes((d / "moov_at_end.mp4").read_bytes()[: len(full) // 2])
    (d / "moov_at_end.mp4").unlink()
    (d / "cut_short.mp4").write_bytes(full[: len(full) // 2])  # index intact, data missing
    ffmpeg(["-f", "lavfi", "-i", "sine=frequency=440:duration=2", "-c:a", "aac", str(d / "audio_only.mp4")])
    encode_frames(d / "one_frame.mp4", np.zeros((1, 64, 96, 3), np.uint8), 24)
    return {"good.mp4": "", TRICKY_NAME: "", "zero.mp4": "empty file", "text.mp4": "Invalid data",
            "truncated.mp4": "Invalid data", "cut_short.mp4": "truncated",
            "audio_only.mp4": "no video stream", "one_frame.mp4": "no clip"}


def longvid(*args: str) -> None:
    subprocess.run(["longvid", *args], check=True, capture_output=True)


def test_each_broken_file_is_one_error_row_and_good_files_survive(tmp_path):
    expected = make_folder(tmp_path / "in")
    rows = [manifest.row(str(p), p) for p in sorted((tmp_path / "in").iterdir())]
    write_jsonl(tmp_path / "manifest.jsonl", rows)
    longvid("probe", "--manifest", str(tmp_path / "manifest.jsonl"), "--out", str(tmp_path / "probe.jsonl"))
    longvid("split", "--probe", str(tmp_path / "probe.jsonl"), "--out", str(tmp_path / "clips.jsonl"),
            "--clip-dir", str(tmp_path / "clips"), "--params", '{"min_scene_seconds": 2, "fps": 8}')
    longvid("filter", "--clips", str(tmp_path / "clips.jsonl"), "--out", str(tmp_path / "filtered.jsonl"),
            "--params", '{"min_frames": 49}')

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
