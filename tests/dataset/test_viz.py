"""`viz`: the mp4s show what the dataset yields (decoded back and compared), with a truthful sidecar."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from longvid.stages import viz_data as viz
from longvid.dataset.loader import VideoClipDataset
from longvid.shapes import caption_of, render_video
from longvid.io import InputError
from longvid.video import read_video, to_uint8


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    rows = []
    for i, (direction, fps) in enumerate([("left", 24), ("up", 30), ("right", 25), ("down", 24)]):
        shot = {"shape": "circle", "color": "yellow", "direction": direction, "background": "purple",
                "start_frame": 0, "end_frame": 40}
        render_video(root / f"c{i}.mp4", [shot], fps, 48, 64)
        rows.append({"path": f"c{i}.mp4", "num_frames": 40, "fps": fps, "width": 64, "height": 48,
                     "text": caption_of(shot), "id": f"c{i}"})
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def parse(*argv):
    p = argparse.ArgumentParser()
    viz.add_arguments(p)
    return p.parse_args(list(argv))


def test_viz_writes_what_the_model_sees(dataset_dir, tmp_path):
    out = tmp_path / "viz"
    args = parse("--jsonl", str(dataset_dir / "train.jsonl"), "--out-dir", str(out), "--num-items", "3",
                 "--seed", "7", "--epoch", "2", "--num-frames", "9", "--height", "32", "--width", "32")
    assert viz.run(args) == 0
    mp4s = sorted(out.glob("*.mp4"))
    assert len(mp4s) == 3 and len(list(out.glob("*.json"))) == 3
    ds = VideoClipDataset(dataset_dir / "train.jsonl", num_frames=9, height=32, width=32, seed=7)
    ds.set_epoch(2)
    ids = set()
    for mp4 in mp4s:
        meta = json.loads(mp4.with_suffix(".json").read_text())
        item = ds[meta["index"]]
        row = ds.rows[meta["index"]]
        assert meta["id"] == item["id"] == row["id"] and meta["text"] == row["text"]
        assert meta["frame_indices"] == item["frame_indices"].tolist()
        assert meta["source_fps"] == row["fps"] and meta["fps"] == 8 and meta["size"] == [9, 32, 32]
        frames = read_video(mp4)
        assert frames.shape == (9, 32, 32, 3)
        # the file shows the dataset's frames (after sampling and crop), up to H.264 loss
        diff = np.abs(frames.astype(int) - to_uint8(item["video"]).astype(int))
        assert diff.mean() < 4
        ids.add(meta["id"])
    assert len(ids) == 3
    # the same seed picks the same items again
    again = tmp_path / "again"
    viz.run(parse("--jsonl", str(dataset_dir / "train.jsonl"), "--out-dir", str(again), "--num-items", "3",
                  "--seed", "7", "--epoch", "2", "--num-frames", "9", "--height", "32", "--width", "32"))
    assert [p.name for p in sorted(again.glob("*.json"))] == [p.with_suffix(".json").name for p in mp4s]


def test_to_uint8_inverts_normalisation():
    x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)
    video = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert np.array_equal(to_uint8(video), x)


def test_viz_rejects_sizes_h264_cannot_store(dataset_dir, tmp_path):
    with pytest.raises(InputError, match="height and width must be even"):
        viz.run(parse("--jsonl", str(dataset_dir / "train.jsonl"), "--out-dir", str(tmp_path), "--num-frames",
                      "9", "--height", "33", "--width", "32", "--num-items", "1"))
    with pytest.raises(InputError, match="num_frames: 10 is not 8N"):
        viz.run(parse("--jsonl", str(dataset_dir / "train.jsonl"), "--out-dir", str(tmp_path), "--num-frames",
                      "10"))
