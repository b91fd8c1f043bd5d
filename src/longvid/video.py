"""Video I/O in one place: reading, writing, the cover-resize + center crop, and uint8 conversion.

* `decode_frames` is the training loader's access pattern: chosen source frames of one clip (sampled
  at the training fps), resized to cover (height, width) and center-cropped. Two backends, PyAV and
  decord (`data.decoder`); both decode to RGB at the source size and share `cover_crop`, so they give
  the same uint8 pixels (bit-equal for the 8-bit H.264 clips `split` writes; see tests/test_video.py).
* `first_frame` (I2V conditions) and `read_video` (evaluation) decode with PyAV.
* `encode_frames` writes uint8 RGB frames to H.264; `run_ffmpeg` runs an ffmpeg-python graph with no
  shell (an argument list), so file names with spaces, quotes or `$(...)` pass through untouched.

PyAV, decord and ffmpeg-python are imported inside the functions: importing this module stays cheap
and fork-safe for the process pools of probe and split.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np

from longvid.io import InputError

DECODERS = ("pyav", "decord")
# The version of what decode_frames returns for given frames and size. Part of every latent-cache
# key (longvid.encode), so a change in decoding or resizing never serves latents of the old pixels.
DECODE_VERSION = 2  # 2: RGB at source size, then one shared resize-and-crop for both backends
# decord numbers frames by its own packet index, which is exact in these containers but not in
# MPEG-TS with B-frames (measured: 4-5 frames late, tests/dataset/test_loader.py); other files fall
# back to PyAV, which numbers frames by timestamp.
DECORD_CONTAINERS = (".mp4", ".m4v", ".mov", ".mkv", ".webm")


def to_uint8(video) -> np.ndarray:
    """(F, 3, H, W) torch tensor in [-1, 1] -> (F, H, W, 3) uint8 (the inverse of the loader's scaling)."""
    import torch

    return ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def cover_size(h: int, w: int, height: int, width: int) -> tuple[int, int]:
    """(h', w') >= (height, width) with the source aspect (the seed's rounding, in integers)."""
    if w * height > width * h:  # wider than the target: match heights
        return height, w * height // h
    return h * width // w, width


def cover_crop(rgb: np.ndarray, height: int, width: int, reformatter=None) -> np.ndarray:
    """An RGB uint8 (H, W, 3) image resized (bicubic, swscale) to cover (height, width), keeping its
    aspect, then center-cropped to exactly (height, width, 3). Pass one `av.video.reformatter.
    VideoReformatter` for many frames of a size: it keeps the scaler (half the cost per frame)."""
    import av

    h, w = rgb.shape[:2]
    rh, rw = cover_size(h, w, height, width)
    if (rh, rw) != (h, w):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        scaler = reformatter or av.video.reformatter.VideoReformatter()
        rgb = scaler.reformat(frame, width=rw, height=rh, format="rgb24", interpolation="BICUBIC").to_ndarray()
    top, left = (rh - height) // 2, (rw - width) // 2
    return rgb[top:top + height, left:left + width]


def first_frame(path: Path, height: int, width: int, where: str) -> np.ndarray:
    """Frame 0 of an image or video as uint8 (height, width, 3), resized to cover and center-cropped
    as training clips are."""
    import av

    try:
        with av.open(str(path)) as c:
            rgb = next(c.decode(video=0)).to_ndarray(format="rgb24")
    except (av.FFmpegError, StopIteration, IndexError) as e:
        raise InputError(f"{where}: I2V image {path} is unreadable ({type(e).__name__}: {e})") from None
    return cover_crop(rgb, height, width)


def read_video(path: Path) -> np.ndarray:
    """All frames of a video as uint8 (F, H, W, 3); InputError naming the file if it cannot be read."""
    import av

    try:
        with av.open(str(path)) as c:
            return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    except (av.FFmpegError, ValueError) as e:  # ValueError: no frames to stack
        raise InputError(f"{path}: unreadable video ({type(e).__name__}: {e})") from None


# --- the training loader's decoding -------------------------------------------------------------

def decode_frames(path: str | os.PathLike, indices: np.ndarray, src_fps: float, height: int, width: int,
                  decoder: str = "pyav") -> np.ndarray:
    """Frames `indices` of `path` as uint8 (len(indices), height, width, 3), resized to cover and
    center-cropped. Frame numbers come from timestamps (round(t * src_fps)); a wanted index gets the
    frame on screen at that time (the last one at or before it). ValueError if the file cannot be
    decoded or ends before the last wanted frame."""
    if decoder not in DECODERS:
        raise InputError(f"data.decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
    from av.video.reformatter import VideoReformatter

    wanted = [int(i) for i in np.unique(indices)]
    use_decord = decoder == "decord" and str(path).lower().endswith(DECORD_CONTAINERS)
    backend = _decord_frames if use_decord else _pyav_frames
    # Each frame is resized as soon as it is decoded: 145 source-size frames at once would be GBs.
    # Kept swscale contexts (one per conversion: alternating sizes in one would rebuild it each time).
    scaler, to_rgb = VideoReformatter(), VideoReformatter()
    got = backend(path, wanted, src_fps, lambda rgb: cover_crop(rgb, height, width, scaler), to_rgb)
    return np.stack([got[int(i)] for i in indices])


def _pyav_frames(path, wanted: list[int], src_fps: float, image, to_rgb) -> dict[int, np.ndarray]:
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError("no video stream")
            stream = container.streams.video[0]
            # A seek lands on the keyframe before the target, except in formats without an index
            # (MPEG-TS) where it may land after it: then retry from further back.
            for back in (0.0, 1.0, 5.0):
                seconds = (wanted[0] - 0.5) / src_fps - back
                if seconds <= 0:
                    break
                container.seek((stream.start_time or 0) + int(seconds / stream.time_base), stream=stream)
                got = _collect(container.decode(stream), stream, wanted, src_fps, image, to_rgb, seeked=True)
                if got is not None:
                    return got
            container.seek(0)  # the clip's start is wanted, or no seek landed early enough
            return _collect(container.decode(stream), stream, wanted, src_fps, image, to_rgb, seeked=False)
    except av.FFmpegError as e:
        raise ValueError(str(e) or type(e).__name__) from None


def _collect(frames, stream, wanted: list[int], src_fps: float, image, to_rgb, seeked: bool
             ) -> dict[int, np.ndarray] | None:
    """Walk decoded frames; None when a seek landed after the first wanted frame."""
    t0, tb = stream.start_time or 0, stream.time_base
    pending, out, prev = list(wanted), {}, None  # prev: [index, frame, its image once made]

    def take(entry):  # convert only frames used, once each (padding and gaps reuse a frame)
        if entry[2] is None:
            entry[2] = image(to_rgb.reformat(entry[1], format="rgb24").to_ndarray())
        return entry[2]

    for frame in frames:
        if frame.pts is None:
            raise ValueError("video frames carry no timestamps")
        entry = [round(float((frame.pts - t0) * tb) * src_fps), frame, None]
        if prev is None and seeked and entry[0] > pending[0]:
            return None
        while pending and pending[0] < entry[0]:  # frames the stream skipped show the previous one
            out[pending.pop(0)] = take(prev or entry)
        if pending and pending[0] == entry[0]:
            out[pending.pop(0)] = take(entry)
        if not pending:
            return out
        prev = entry
    if prev is None:
        raise ValueError("no decodable video frames")
    _check_end(prev[0], pending[-1])
    for w in pending:  # the last frame is one short of the metadata's count: it stays on screen
        out[w] = take(prev)
    return out


def _check_end(last: int, wanted: int) -> None:
    if wanted - last > 1:
        raise ValueError(f"stream ends at frame {last}, frame {wanted} was wanted "
                         f"(num_frames in the row is larger than the decodable frames)")


def _decord_frames(path, wanted: list[int], src_fps: float, image, _to_rgb, chunk: int = 16
                   ) -> dict[int, np.ndarray]:
    """decord reads by position in the stream; wanted frame numbers map to positions through the
    frames' timestamps, with PyAV's "frame on screen" rule, so variable-rate files agree too."""
    import decord

    try:
        # One thread: DataLoader workers already decode clips in parallel.
        reader = decord.VideoReader(str(path), num_threads=1)
        if len(reader) == 0:
            raise ValueError("no decodable video frames")
        starts = reader.get_frame_timestamp(np.arange(len(reader)))[:, 0]  # seconds from the first
        numbers = np.round(starts * src_fps).astype(np.int64)
        _check_end(int(numbers[-1]), wanted[-1])
        positions = np.maximum(np.searchsorted(numbers, wanted, side="right") - 1, 0)
        unique = np.unique(positions).tolist()
        images = {}
        for k in range(0, len(unique), chunk):  # in chunks: native-size frames are large
            part = unique[k:k + chunk]
            images.update(zip(part, map(image, reader.get_batch(part).asnumpy())))
    except (RuntimeError, decord.DECORDError) as e:  # decord's C++ errors arrive as RuntimeError
        # drop the "[12:00:00] /path/video_reader.cc:151: " prefix of decord's messages
        raise ValueError(re.sub(r"\[[\d:]+\] \S+: ", "", " ".join(str(e).split()))[:300]) from None
    return {w: images[int(p)] for w, p in zip(wanted, positions)}


# --- ffmpeg ------------------------------------------------------------------------------------

def ffmpeg_exe() -> str:
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise RuntimeError("ffmpeg not found on PATH; install it (apt-get install ffmpeg) or run `make setup`")
    return exe


def run_ffmpeg(stream, input: bytes | None = None) -> None:
    """Run an ffmpeg-python output graph (overwriting); RuntimeError with ffmpeg's last stderr line."""
    import ffmpeg

    stream = stream.global_args("-nostdin", "-hide_banner", "-loglevel", "error").overwrite_output()
    try:  # ffmpeg-python runs an argument list (subprocess, no shell)
        stream.run(cmd=ffmpeg_exe(), input=input, capture_stdout=True, capture_stderr=True)
    except ffmpeg.Error as e:
        last = (e.stderr.decode(errors="replace").strip().splitlines() or ["(no message)"])[-1]
        raise RuntimeError(f"ffmpeg failed: {last}") from None


def h264(stream, path: str | os.PathLike, crf: int = 18):
    """`stream` encoded as the pipeline's mp4: H.264 yuv420p (even sizes), index at the front.

    ffmpeg-python always builds a -filter_complex graph, whose output ffmpeg 5.1 treats as constant
    rate from t=0: a cut starting at 0.02 s gained a duplicated first frame. Passing timestamps
    through gives the exact bytes the former `-vf` commands gave."""
    return stream.output(str(path), an=None, vcodec="libx264", preset="veryfast", crf=crf,
                         pix_fmt="yuv420p", movflags="+faststart", fps_mode="passthrough")


def encode_frames(path: str | os.PathLike, frames: np.ndarray, fps: float, crf: int = 18) -> None:
    """Write uint8 RGB frames (T, H, W, 3) to an H.264 mp4 (even sizes required by yuv420p)."""
    import ffmpeg

    _, h, w, _ = frames.shape
    raw = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{w}x{h}", r=f"{fps}")
    try:
        run_ffmpeg(h264(raw, path, crf), input=np.ascontiguousarray(frames, dtype=np.uint8).tobytes())
    except RuntimeError as e:
        raise RuntimeError(f"ffmpeg encode of {path} failed: {str(e).removeprefix('ffmpeg failed: ')}") from None
