"""Which frames of a clip a vision-language model sees, and the JPEG bytes sent for them.

* `frame_count`: `fps` frames per second of clip (2 by default, as NeMo Curator and Cosmos-Curate
  sample), rounded to an even count (Qwen-VL pairs frames) and clamped to [min_frames, max_frames].
* `frame_indices`: that many frames spread evenly over the clip's frames [first, last): the centre of
  each of `n` equal slices, so a 2 s clip at 30 fps gives 4 frames at 7, 22, 37, 52.
* `frame_size`: the frame size within `max_pixels`, aspect kept, sides rounded to multiples of 28
  (Qwen2.5-VL's 14 px patch x 2x2 merge: the server need not resize again), never above the source
  unless rounding up to the first multiple.
* `prepare`: the `Frames` of one clip row: decoded with longvid.video.decode_frames (timestamps,
  cover-resize) and JPEG-encoded with PIL, or (mode `video_file`) the clip file's bytes.

Frames are counted in the clip FILE: the clip rows of split point at cut clips, whose frames are
[0, num_frames). A row whose `path` is its source video (split.cut false, or a whole-video clip)
uses [start_frame, end_frame) of that video when the row has them.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from longvid.video import decode_frames

PATCH = 28  # Qwen2.5-VL: 14 px patches merged 2x2


@dataclass
class Frames:
    """What is sent for one clip. `jpegs` empty and `video` set in mode video_file."""
    indices: list[int]  # frame numbers in the clip file
    width: int
    height: int
    src_fps: float  # the file's frame rate (frame numbers -> seconds)
    total_num_frames: int  # frames of the clip file
    duration: float  # seconds of the clip file
    jpegs: list[bytes] = field(default_factory=list)
    video: bytes | None = None
    shrunk: int = 0  # how many times halved after a "too many visual tokens" 400
    first: int = 0  # the clip's first frame in the file (non-zero only for a clip of a whole video)
    b64: list[str] = field(default_factory=list)  # base64 of jpegs (or of video), made in the decode thread
    rgb: np.ndarray | None = None  # (n, h, w, 3) uint8, for a local model (prepare(..., encode=False))

    def describe(self) -> dict:
        """The record stored with the caption (caption_frames)."""
        return {"count": len(self.indices), "indices": self.indices, "width": self.width, "height": self.height,
                "fps": self.src_fps, "shrunk": self.shrunk, **({"file": True} if self.video is not None else {})}


def even_clamp(n: int, lo: int, hi: int) -> int:
    """`n` clamped to [lo, hi] and made even (rounding up inside the range, else down); at least 2."""
    lo_even, hi_even = lo + (lo % 2), hi - (hi % 2)
    if hi_even < lo_even:  # e.g. min_frames = max_frames = 5: no even count inside, take the nearest
        return max(2, hi_even)
    n = min(max(n, lo_even), hi_even)
    return n + 1 if n % 2 and n + 1 <= hi_even else n - (n % 2)


def frame_count(duration: float, cfg: dict, shrink: int = 0) -> int:
    """Frames to send for a clip of `duration` seconds: cfg fps, min_frames, max_frames; each
    `shrink` halves the count (never below min_frames, rounded to even)."""
    n = even_clamp(int(round(duration * cfg["fps"])), cfg["min_frames"], cfg["max_frames"])
    for _ in range(shrink):
        n = even_clamp((n // 2) & ~1, cfg["min_frames"], cfg["max_frames"])  # half, rounded down to even
    return n


def frame_indices(first: int, last: int, n: int) -> list[int]:
    """`n` frame numbers spread over [first, last): the centre of each of n equal slices (a clip
    shorter than n frames repeats frames, in order)."""
    span = max(1, last - first)
    return [first + min(span - 1, int((k + 0.5) * span / n)) for k in range(n)]


def frame_size(width: int, height: int, max_pixels: int, factor: int = PATCH) -> tuple[int, int]:
    """(width, height) with about the source aspect, both multiples of `factor`, width*height <=
    max_pixels (Qwen-VL's smart_resize: round to the factor, scale down to fit)."""
    w = max(factor, round(width / factor) * factor)
    h = max(factor, round(height / factor) * factor)
    if w * h > max_pixels:
        beta = math.sqrt(width * height / max_pixels)
        w = max(factor, math.floor(width / beta / factor) * factor)
        h = max(factor, math.floor(height / beta / factor) * factor)
    return w, h


def clip_span(row: dict) -> tuple[int, int]:
    """[first, last) frame numbers of the clip in its file (see the module doc)."""
    n = int(row.get("num_frames") or 0)
    if row.get("source_path") and row.get("path") == row["source_path"] and row.get("end_frame"):
        return int(row.get("start_frame") or 0), int(row["end_frame"])
    return 0, n


def jpeg(rgb: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def prepare(row: dict, cfg: dict, shrink: int = 0, encode: bool = True) -> Frames:
    """The frames of clip `row` (a clip table row: path, num_frames, fps, duration, width, height)
    for the `caption` section `cfg`: JPEG-encoded, or with `encode` False as RGB arrays (`rgb`, for
    a model in this process). ValueError when the file cannot be decoded."""
    first, last = clip_span(row)
    fps = float(row.get("fps") or 0)
    if last <= first or fps <= 0:
        raise ValueError(f"clip row has no frames to sample (num_frames={row.get('num_frames')}, fps={fps})")
    duration = (last - first) / fps
    indices = frame_indices(first, last, frame_count(duration, cfg, shrink))
    max_pixels = max(PATCH * PATCH, cfg["max_pixels"] >> shrink)
    width, height = frame_size(int(row["width"]), int(row["height"]), max_pixels)
    if cfg["mode"] == "video_file" and encode:  # the server samples: no indices, the file as it is
        data = Path(row["path"]).read_bytes()
        return Frames([], int(row["width"]), int(row["height"]), fps, last - first, duration, video=data,
                      first=first, b64=[base64.b64encode(data).decode("ascii")])
    frames = Frames(indices, width, height, fps, last - first, duration, shrunk=shrink, first=first)
    rgb = decode_frames(row["path"], np.array(indices), fps, height, width)
    if not encode:
        frames.rgb = np.asarray(rgb, dtype=np.uint8)
        return frames
    frames.jpegs = [jpeg(f, cfg["jpeg_quality"]) for f in rgb]
    frames.b64 = [base64.b64encode(j).decode("ascii") for j in frames.jpegs]  # off the event loop
    return frames
