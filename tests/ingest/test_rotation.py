"""Rotated videos (a display matrix on a sideways-coded stream): probe records the displayed size, and
split stores clips upright at that size, as a player shows the source."""

import ffmpeg
import numpy as np
import pytest

from longvid import config
from longvid.ingest.probe import probe_file
from longvid.ingest.split import split_video
from longvid.video import encode_frames, read_video, run_ffmpeg

# the schema's split section, without scene detection (one shot per video)
CFG = {**config.validate({"source": {"type": "synthetic"}}, "dataset.schema.yaml", "")["split"], "detector": "none"}


@pytest.fixture(scope="module")
def coded(tmp_path_factory):
    """24 frames coded 160 wide x 96 high, a red block in the coded top-left corner."""
    frames = np.zeros((24, 96, 160, 3), np.uint8)
    frames[:, :16, :16] = (255, 0, 0)
    path = tmp_path_factory.mktemp("rot") / "coded.mp4"
    encode_frames(path, frames, 24)
    return path, frames[0]


def rotated(coded_path, tmp_path, degrees):
    """The same stream, copied, with a display matrix (ffmpeg 5.1: the `rotate` tag writes it)."""
    out = tmp_path / f"rot{degrees}.mp4"
    run_ffmpeg(ffmpeg.input(str(coded_path)).output(str(out), c="copy", **{"metadata:s:v": f"rotate={degrees}"}))
    return out


@pytest.mark.parametrize("degrees", [90, 270])
def test_probe_and_split_use_the_displayed_size(coded, tmp_path, degrees):
    coded_path, first = coded
    src = rotated(coded_path, tmp_path, degrees)
    row = {"id": "v", "path": str(src), "captions": [], "meta": {}, **probe_file(str(src))}
    assert not row["error"] and row["rotation"] % 180 == 90
    assert (row["width"], row["height"]) == (96, 160)  # displayed: portrait; coded: 160x96

    clip = split_video(row, tmp_path / "clips", CFG)["clips"][0]
    assert not clip["error"] and (clip["width"], clip["height"]) == (96, 160)
    pixels = read_video(clip["path"])
    assert pixels.shape == (24, 160, 96, 3)  # stored upright: no display matrix left to apply
    assert probe_file(clip["path"])["rotation"] == 0
    # the clip shows the coded frame turned as the display matrix says (PyAV: counter-clockwise)
    expected = np.rot90(first, k=row["rotation"] // 90)
    assert np.abs(pixels[0].astype(int) - expected).mean() < 3

    # short_side applies to the displayed picture: the short side is the width
    small = split_video(row, tmp_path / "small", {**CFG, "short_side": 64})["clips"][0]
    assert (small["width"], small["height"]) == (64, 106)
    assert read_video(small["path"]).shape[1:] == (106, 64, 3)


def test_an_uncut_rotated_video_reports_its_displayed_size(coded, tmp_path):
    src = rotated(coded[0], tmp_path, 90)
    row = {"id": "v", "path": str(src), "captions": [], "meta": {}, **probe_file(str(src))}
    clip = split_video(row, tmp_path / "clips", {**CFG, "cut": False})["clips"][0]
    assert clip["path"] == str(src) and (clip["width"], clip["height"]) == (96, 160)
