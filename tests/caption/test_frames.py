"""Which frames a clip sends: 2 fps inside the clip file, an even count in [min, max], a pixel budget."""

import io

import numpy as np
import pytest
from clipkit import render_clips, stage_cfg
from PIL import Image

from longvid.caption.frames import even_clamp, frame_count, frame_indices, frame_size, prepare

CFG = stage_cfg()["caption"]


@pytest.mark.parametrize("n,lo,hi,want", [(0, 4, 32, 4), (5, 4, 32, 6), (7, 4, 32, 8), (33, 4, 32, 32),
                                          (31, 4, 31, 30), (3, 5, 9, 6), (9, 5, 5, 4), (1, 1, 32, 2)])
def test_even_clamp(n, lo, hi, want):
    assert even_clamp(n, lo, hi) == want


@pytest.mark.parametrize("seconds,want", [(0.5, 4), (2.0, 4), (3.0, 6), (4.9, 10), (10.0, 20), (60.0, 32)])
def test_two_fps_even_clamped(seconds, want):
    assert frame_count(seconds, CFG) == want


def test_shrink_halves_but_not_below_min():
    assert [frame_count(10.0, CFG, s) for s in range(4)] == [20, 10, 4, 4]


def test_indices_spread_inside_the_clip():
    assert frame_indices(0, 60, 4) == [7, 22, 37, 52]  # 2 s at 30 fps
    got = frame_indices(100, 200, 8)
    assert got == sorted(got) and got[0] >= 100 and got[-1] < 200 and len(set(got)) == 8
    assert frame_indices(0, 3, 4) == [0, 1, 1, 2]  # fewer frames than wanted: repeats, in order


@pytest.mark.parametrize("w,h", [(1920, 1080), (720, 480), (480, 720), (112, 84), (4000, 100)])
def test_size_fits_budget_keeps_aspect_multiples_of_28(w, h):
    mw, mh = frame_size(w, h, CFG["max_pixels"])
    assert mw % 28 == 0 and mh % 28 == 0 and mw * mh <= CFG["max_pixels"]
    if w * h > CFG["max_pixels"] and min(w, h) > 200:
        assert abs(mw / mh - w / h) / (w / h) < 0.1
        assert mw * mh > CFG["max_pixels"] * 0.7  # not needlessly small


def test_prepare_decodes_jpegs_at_planned_indices(tmp_path):
    row = render_clips(tmp_path, 1, frames=24)[0]  # 3 s at 8 fps -> 6 frames
    cfg = {**CFG, "max_pixels": 56 * 84}
    f = prepare(row, cfg)
    assert f.indices == frame_indices(0, 24, 6) and len(f.jpegs) == 6
    assert (f.width, f.height) == frame_size(112, 84, 56 * 84)
    img = Image.open(io.BytesIO(f.jpegs[0]))
    assert img.format == "JPEG" and img.size == (f.width, f.height)
    assert f.describe()["count"] == 6 and f.describe()["indices"] == f.indices
    # the object moves: first and last frames differ
    a, b = (np.asarray(Image.open(io.BytesIO(j))) for j in (f.jpegs[0], f.jpegs[-1]))
    assert np.abs(a.astype(int) - b).mean() > 1
    half = prepare(row, cfg, shrink=1)
    assert len(half.indices) == 4 and half.width * half.height <= cfg["max_pixels"] // 2 and half.shrunk == 1


def test_video_file_mode_sends_the_file(tmp_path):
    row = render_clips(tmp_path, 1)[0]
    f = prepare(row, {**CFG, "mode": "video_file"})
    assert f.video == open(row["path"], "rb").read() and not f.jpegs and f.describe()["file"]


def test_whole_video_clip_uses_its_span(tmp_path):
    row = render_clips(tmp_path, 1, frames=40)[0]
    row = {**row, "source_path": row["path"], "start_frame": 16, "end_frame": 32, "num_frames": 40}
    f = prepare(row, CFG)
    assert all(16 <= i < 32 for i in f.indices) and f.total_num_frames == 16 and f.first == 16


def test_undecodable_clip_raises_valueerror(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(ValueError):
        prepare({"id": "x", "path": str(bad), "num_frames": 16, "fps": 8.0, "width": 112, "height": 84}, CFG)
    with pytest.raises(ValueError, match="no frames"):
        prepare({"id": "x", "path": str(bad), "num_frames": 0, "fps": 8.0, "width": 112, "height": 84}, CFG)
