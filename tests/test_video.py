"""longvid.video on real files made by real ffmpeg: both loader backends give the same pixels, errors
name what failed, and writing round-trips."""

from __future__ import annotations

import av
import ffmpeg
import numpy as np
import pytest

from longvid.dataset.loader import plan_frames
from longvid.io import InputError
from longvid.video import DECODERS, cover_crop, decode_frames, encode_frames, h264, read_video, run_ffmpeg

SRC_FPS, FPS = 24, 8


def make_clip(path, pix_fmt=None, seconds=7, size="320x240"):
    """A moving colour test pattern, encoded as `split` encodes clips (or H.264 in another pix_fmt)."""
    src = ffmpeg.input(f"testsrc2=size={size}:rate={SRC_FPS}:duration={seconds}", f="lavfi")
    run_ffmpeg(src.output(str(path), vcodec="libx264", pix_fmt=pix_fmt) if pix_fmt else h264(src, path))
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("v") / "clip.mp4")


# (height, width): the source size (no resize), a downscale + crop, an upscale + crop
@pytest.mark.parametrize("size", [(240, 320), (96, 160), (300, 360)])
@pytest.mark.parametrize("num_frames", [17, 49])
def test_pyav_and_decord_give_identical_pixels(clip, size, num_frames):
    rng = np.random.default_rng(num_frames)
    for _ in range(3):  # random starts, as the loader draws them: most need a seek
        indices, _ = plan_frames(7 * SRC_FPS, SRC_FPS, num_frames, FPS, rng)
        a = decode_frames(clip, indices, SRC_FPS, *size, decoder="pyav")
        b = decode_frames(clip, indices, SRC_FPS, *size, decoder="decord")
        assert a.shape == (num_frames, *size, 3) and a.dtype == np.uint8
        assert np.array_equal(a, b), (indices[0], np.abs(a.astype(int) - b).max())
        assert a.std() > 20  # a real picture, not two identical blank results


@pytest.mark.parametrize("pix_fmt", ["yuvj420p", "yuv444p"])
def test_backends_agree_on_other_8bit_formats(tmp_path, pix_fmt):
    path = make_clip(tmp_path / f"{pix_fmt}.mp4", pix_fmt, seconds=3)
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.format.name == pix_fmt
    indices = np.arange(10, 40, 3)
    a, b = (decode_frames(path, indices, SRC_FPS, 96, 160, decoder=d) for d in DECODERS)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("decoder", DECODERS)
def test_decode_failures_are_value_errors_that_say_why(tmp_path, clip, decoder):
    text = tmp_path / "text.mp4"
    text.write_text("not a video\n")
    audio = tmp_path / "audio.mp4"
    run_ffmpeg(ffmpeg.input("sine=duration=1", f="lavfi").output(str(audio), acodec="aac"))
    with pytest.raises(ValueError, match="(?i)invalid data|error reading"):
        decode_frames(text, np.arange(3), SRC_FPS, 32, 32, decoder)
    with pytest.raises(ValueError, match="(?i)video stream"):
        decode_frames(audio, np.arange(3), SRC_FPS, 32, 32, decoder)
    with pytest.raises(ValueError, match="stream ends at frame 167, frame 200 was wanted"):
        decode_frames(clip, np.array([150, 200]), SRC_FPS, 32, 32, decoder)
    # one frame past the end is the last one still on screen (metadata counts are often one high)
    end = decode_frames(clip, np.array([167, 168]), SRC_FPS, 32, 32, decoder)
    assert np.array_equal(end[0], end[1])
    with pytest.raises(InputError, match="data.decoder must be one of pyav, decord"):
        decode_frames(clip, np.arange(3), SRC_FPS, 32, 32, "opencv")


def test_cover_crop_keeps_the_center_and_aspect():
    img = np.zeros((60, 120, 3), np.uint8)
    img[:, 30:90] = 255  # the middle half is white
    out = cover_crop(img, 40, 40)  # 60x120 -> 40x80, then columns 20..60: all of the white band
    assert out.shape == (40, 40, 3)
    assert out[:, 3:-3].min() > 240
    assert np.array_equal(cover_crop(img, 60, 120), img)  # the size already fits: untouched


def test_encode_read_round_trip_and_errors(tmp_path):
    frames = np.zeros((5, 32, 48, 3), np.uint8)
    frames[:, :, :24] = (200, 30, 30)
    encode_frames(tmp_path / "a.mp4", frames, fps=8)
    back = read_video(tmp_path / "a.mp4")
    assert back.shape == frames.shape and np.abs(back.astype(int) - frames).mean() < 3
    with pytest.raises(RuntimeError, match=r"ffmpeg encode of .*odd\.mp4 failed: .*\S"):
        encode_frames(tmp_path / "odd.mp4", np.zeros((3, 33, 47, 3), np.uint8), 8)  # yuv420p needs even
    (tmp_path / "bad.mp4").write_text("no")
    with pytest.raises(InputError, match="bad.mp4: unreadable video"):
        read_video(tmp_path / "bad.mp4")

