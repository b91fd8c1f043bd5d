"""Training clips from a dataset JSONL, and the resumable order in which ranks read them.

`VideoClipDataset` is the research code's `SftJsonlDataset` (seed-analysis §5) made explicit and
reproducible:

* frames are sampled at the target fps: source frame `start + round(k * src_fps / fps)` for
  k < num_frames (the stride may be fractional; a stride below 1 repeats frames);
* the temporal start is drawn from a generator seeded by (seed, epoch, index), so an item is the same
  whichever worker, rank or resumed run loads it;
* a clip too short for num_frames at the target fps keeps its largest tk+1 frames (whole latent frames
  of the VAE's t-fold temporal compression, `temporal_compression`) and repeats the last one — the
  seed's case (c) — and is reported, not hidden;
* frames are decoded by `longvid.video.decode_frames` (PyAV or decord: `decoder`, the same pixels),
  resized (bicubic) so they cover height x width, keeping the aspect, then center-cropped, and
  scaled to [-1, 1];
* a clip that fails to decode raises an error naming the JSONL file and line (`on_error="raise"`), or
  is replaced by the next decodable row with a warning (`on_error="skip"`), never by a random one.

Per-row sizes (from `longvid.dataset.buckets`) override (num_frames, height, width) row by row.

`ResumableDistributedSampler` gives every epoch a permutation that depends only on (seed, epoch); rank r
reads blocks of `batch_size` items so that the ranks' batches, concatenated in rank order, are exactly
the single-process global batch. The trainer calls `advance(n)` after consuming n items (the sampler
cannot count for itself: DataLoader workers prefetch ahead of training), and `state_dict()` then
records exactly what the run has trained on.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from longvid.io import InputError
from longvid.models.config import COGVIDEOX_TEMPORAL, check_num_frames
from longvid.video import DECODERS, decode_frames

log = logging.getLogger(__name__)


class ClipError(InputError):
    """A clip that cannot be read; the message names the JSONL file and line."""


def source_fps(row: dict) -> float | None:
    """A row's frame rate: `fps`, else num_frames / duration (the seed's add_fps.py rows)."""
    fps = row.get("fps")
    if isinstance(fps, (int, float)) and fps > 0:
        return float(fps)
    duration, n = row.get("duration"), row.get("num_frames")
    if isinstance(duration, (int, float)) and duration > 0 and isinstance(n, int):
        return n / duration
    return None


def frame_offsets(count: int, stride: float) -> np.ndarray:
    """Offsets of `count` frames sampled every `stride` source frames, each the nearest source frame."""
    return np.floor(np.arange(count) * stride + 0.5).astype(np.int64)


def frames_at_fps(n_src: int, src_fps: float, fps: float, skip: int = 0) -> int:
    """How many frames a clip of `n_src` source frames yields at `fps` (first and last `skip` unused)."""
    length, stride = n_src - 2 * skip, src_fps / fps
    if length < 1:
        return 0
    n = max(1, math.ceil((length - 0.5) / stride))
    while frame_offsets(n + 1, stride)[-1] <= length - 1:  # float rounding near the bound
        n += 1
    while n > 1 and frame_offsets(n, stride)[-1] > length - 1:
        n -= 1
    return n


def plan_frames(n_src: int, src_fps: float, num_frames: int, fps: float,
                rng: np.random.Generator | None = None, skip: int = 0,
                temporal: int = COGVIDEOX_TEMPORAL) -> tuple[np.ndarray, int]:
    """Source frame indices (num_frames of them) and how many are real (the rest repeat the last).

    A long enough clip starts at a random frame (`rng`) or at `skip` (no rng); a short one keeps its
    largest `temporal`k+1 frames (whole latent frames) from `skip` and is padded.
    """
    offsets = frame_offsets(num_frames, src_fps / fps)
    last = n_src - 1 - skip
    if skip + offsets[-1] <= last:
        start = skip if rng is None else int(rng.integers(skip, last - offsets[-1] + 1))
        return start + offsets, num_frames
    available = frames_at_fps(n_src, src_fps, fps, skip)
    if available < 1:
        raise ValueError(f"no frames left after skipping {skip} at each end of {n_src}")
    real = (available - 1) // temporal * temporal + 1
    indices = np.full(num_frames, skip + offsets[real - 1], np.int64)
    indices[:real] = skip + offsets[:real]
    return indices, real


class VideoClipDataset(Dataset):
    """Items {"video": (F, 3, H, W) float in [-1, 1], "text", "id", "num_frames" (real, unpadded),
    "fps", "frame_indices" (source frames used), "padded", "index"}.

    Call `set_epoch(epoch)` before iterating each epoch (DataLoader workers copy the dataset when an
    iterator is created, so use persistent_workers=False, or the workers keep the old epoch).
    """

    def __init__(self, jsonl_path: str | os.PathLike, root: str | os.PathLike | None = None,
                 num_frames: int = 49, fps: float = 8, height: int = 64, width: int = 64,
                 text_key: str = "text", sub_text_key: str = "cap", seed: int = 0, random_start: bool = True,
                 skip_frames: int = 0, on_error: str = "raise", decoder: str = "pyav",
                 temporal_compression: int = COGVIDEOX_TEMPORAL):
        # the VAE's (runtime.Geometry.temporal); the default serves callers that build no VAE (viz)
        self.temporal = temporal_compression
        self.num_frames = check_num_frames(num_frames, "num_frames", self.temporal)
        for key, value in (("fps", fps), ("height", height), ("width", width)):
            if not value > 0:
                raise InputError(f"{key} must be positive, got {value!r}")
        if on_error not in ("raise", "skip"):
            raise InputError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if decoder not in DECODERS:  # longvid.video: both give the same pixels; speed differs
            raise InputError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
        self.decoder = decoder
        self.jsonl = Path(jsonl_path)
        self.root = os.path.abspath(root if root is not None else self.jsonl.parent)
        self.fps, self.height, self.width = fps, height, width
        self.text_key, self.sub_text_key = text_key, sub_text_key
        self.seed, self.random_start, self.skip_frames = seed, random_start, skip_frames
        self.on_error = on_error
        self.epoch = 0
        self.rows, self.lines, self.paths = [], [], []
        self._load()
        self.sizes: list[tuple[int, int, int] | None] = [None] * len(self.rows)
        self.short_rows = self._report_short()

    def _load(self) -> None:
        if not self.jsonl.is_file():
            raise InputError(f"{self.jsonl}: dataset JSONL not found")
        with open(self.jsonl) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{self.jsonl}:{lineno}"
                try:
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise InputError(f"{where}: expected a JSON object")
                    path = self._resolve(row, where)
                    self._check_row(row, where)
                except json.JSONDecodeError as e:
                    raise InputError(f"{where}: not valid JSON ({e.msg})") from None
                except ClipError as e:  # bad metadata: fatal unless the user asked to skip
                    if self.on_error == "raise":
                        raise
                    log.warning("%s; row dropped", e)
                    continue
                self.rows.append(row)
                self.lines.append(lineno)
                self.paths.append(path)
        if not self.rows:
            raise InputError(f"{self.jsonl}: no usable rows")

    def _resolve(self, row: dict, where: str) -> str:
        rel = row.get("path")
        if not isinstance(rel, str) or not rel:
            raise ClipError(f"{where}: missing key `path`")
        # Lexical check (abspath collapses `..`): a JSONL must not make us read files outside the
        # dataset directory; symlinks the dataset's owner placed inside it are their choice.
        full = os.path.abspath(os.path.join(self.root, rel))
        if os.path.commonpath([self.root, full]) != self.root:
            raise InputError(f"{where}: path {rel!r} resolves outside the dataset root {self.root}")
        return full

    def _check_row(self, row: dict, where: str) -> None:
        n = row.get("num_frames")
        if not isinstance(n, int) or n < 1:
            raise ClipError(f"{where}: `num_frames` must be a positive integer, got {n!r}")
        if source_fps(row) is None:
            raise ClipError(f"{where}: needs a positive `fps` (or `duration` to derive it)")
        text = row.get(self.text_key)
        if not text or not (isinstance(text, str) or isinstance(text, list)):
            raise ClipError(f"{where}: no caption under key `{self.text_key}`")

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_sizes(self, sizes: Sequence[tuple[int, int, int] | None]) -> None:
        """Per-row (num_frames, height, width), e.g. `BucketPlan.row_sizes`; None keeps the default."""
        if len(sizes) != len(self.rows):
            raise InputError(f"sizes has {len(sizes)} entries for {len(self.rows)} rows of {self.jsonl}")
        for i, size in enumerate(sizes):
            if size is not None:
                check_num_frames(int(size[0]), f"sizes[{i}] frames", self.temporal)
        self.sizes = [None if s is None else tuple(int(v) for v in s) for s in sizes]
        self.short_rows = self._report_short()

    def shape_of(self, index: int) -> tuple[int, int, int]:
        return self.sizes[index] or (self.num_frames, self.height, self.width)

    def where(self, index: int) -> str:
        return f"{self.jsonl}:{self.lines[index]}"

    def _report_short(self) -> list[int]:
        short = [i for i, row in enumerate(self.rows)
                 if frames_at_fps(row["num_frames"], source_fps(row), self.fps, self.skip_frames)
                 < self.shape_of(i)[0]]
        if short:
            log.warning("%s: %d of %d clips have fewer frames than needed at %g fps; each keeps its "
                        "largest %dk+1 frames and repeats the last (first: line %d)", self.jsonl,
                        len(short), len(self.rows), self.fps, self.temporal, self.lines[short[0]])
        return short

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def load(self, index: int, shape: tuple[int, int, int] | None = None) -> dict:
        """Item `index`, sized `shape` (default: its own); ClipError if its file cannot be read."""
        row = self.rows[index]
        frames, height, width = shape or self.shape_of(index)
        rng = self.rng(index)
        try:
            indices, real = plan_frames(row["num_frames"], source_fps(row), frames, self.fps,
                                        rng if self.random_start else None, self.skip_frames, self.temporal)
            pixels = decode_frames(self.paths[index], indices, source_fps(row), height, width, self.decoder)
        except (OSError, ValueError) as e:  # longvid.video turns decoder errors into ValueError
            reason = " ".join(str(e).split()) or type(e).__name__
            raise ClipError(f"{self.where(index)}: cannot read {row['path']}: {reason}") from None
        video = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(127.5).sub_(1)
        return {"video": video, "text": self._caption(row, rng), "id": str(row.get("id", index)),
                "num_frames": real, "fps": self.fps, "frame_indices": torch.from_numpy(indices),
                "padded": real < frames, "index": index}

    def _caption(self, row: dict, rng: np.random.Generator) -> str:
        text = row[self.text_key]
        if isinstance(text, list):  # e.g. `caps`: one caption per item, drawn like the start frame
            text = text[int(rng.integers(len(text)))]
            if isinstance(text, dict):
                text = text.get(self.sub_text_key, "")
        return str(text)

    def __getitem__(self, index: int) -> dict:
        try:
            return self.load(index)
        except ClipError as first:
            if self.on_error == "raise":
                raise
            log.warning("%s; using the next row instead", first)
            for step in range(1, len(self)):  # deterministic stand-in, same shape (same bucket)
                try:
                    return self.load((index + step) % len(self), self.shape_of(index))
                except ClipError as e:
                    log.warning("%s; using the next row instead", e)
            raise first
