"""Buckets by frames, resolution and aspect under a per-GPU token budget.

The research code trained every sample at one size (seed-analysis §5: no buckets). Here a dataset may
mix aspects and lengths: each row goes to the candidate (frames, height, width) bucket whose aspect is
closest to its own among the buckets it has enough frames for (ties: more frames, then more pixels),
and every bucket gets the batch size that fits the token budget:

    tokens(F, H, W) = ((F - 1) / temporal + 1) * (H / spatial / patch) * (W / spatial / patch)
    batch_size      = max(1, max_tokens // tokens)

temporal and spatial are the VAE's compression, patch the DiT's (CogVideoX: 4, 8, 2); callers pass them
as a `runtime.Geometry` read from the built VAE and DiT config. `BucketBatchSampler` yields per-rank
batches that hold one bucket only; all ranks are in the same bucket at the same step, and the ranks'
batches concatenated in rank order are the single-process global batch. Like the item sampler it is
seeded per epoch and resumable (`advance()` per batch consumed, `state_dict()`).
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
from torch.utils.data import Sampler

from longvid.dataset.loader import frames_at_fps, source_fps
from longvid.dataset.sampler import ResumableSampling
from longvid.io import InputError
from longvid.models.config import check_num_frames

if TYPE_CHECKING:  # only its numbers are used; runtime builds models
    from longvid.runtime import Geometry

log = logging.getLogger(__name__)


@dataclass
class BucketPlan:
    buckets: list[tuple[int, int, int]]  # (frames, height, width)
    tokens: list[int]  # per sample
    batch_sizes: list[int]  # per rank
    assignment: list[int | None]  # bucket of each row; None: too short for every bucket
    max_tokens: int

    @property
    def row_sizes(self) -> list[tuple[int, int, int] | None]:
        """Per-row target size, for `VideoClipDataset.set_sizes`."""
        return [None if b is None else self.buckets[b] for b in self.assignment]

    def counts(self) -> list[int]:
        return [sum(a == b for a in self.assignment) for b in range(len(self.buckets))]

    def summary(self) -> dict:
        return {"max_tokens": self.max_tokens, "unassigned": sum(a is None for a in self.assignment),
                "buckets": [{"frames": f, "height": h, "width": w, "tokens": t, "batch_size": bs, "rows": n}
                            for (f, h, w), t, bs, n in zip(self.buckets, self.tokens, self.batch_sizes,
                                                           self.counts())]}


def check_buckets(buckets: Sequence[Sequence[int]], geometry: Geometry) -> list[tuple[int, int, int]]:
    multiple = geometry.spatial * geometry.patch
    out = []
    for i, bucket in enumerate(buckets):
        if len(bucket) != 3:
            raise InputError(f"buckets[{i}] must be [frames, height, width], got {list(bucket)}")
        frames, height, width = (int(v) for v in bucket)
        check_num_frames(frames, f"buckets[{i}] frames", geometry.temporal)
        if height < multiple or width < multiple or height % multiple or width % multiple:
            raise InputError(f"buckets[{i}] height and width must be positive multiples of {multiple} "
                             f"(spatial compression x patch), got {height}x{width}")
        out.append((frames, height, width))
    if not out:
        raise InputError("buckets: at least one [frames, height, width] bucket is needed")
    return out


def choose_bucket(width: int, height: int, frames: int,
                  buckets: Sequence[tuple[int, int, int]]) -> int | None:
    """The bucket with the closest aspect (log ratio) among those `frames` can fill."""
    fits = [b for b, (f, _, _) in enumerate(buckets) if f <= frames]
    if not fits:
        return None
    aspect = math.log(width / height)
    return min(fits, key=lambda b: (abs(math.log(buckets[b][2] / buckets[b][1]) - aspect),
                                    -buckets[b][0], -buckets[b][1] * buckets[b][2], b))


def plan_buckets(rows: Sequence[dict], buckets: Sequence[Sequence[int]], max_tokens: int, geometry: Geometry,
                 fps: float | None = None, skip_frames: int = 0) -> BucketPlan:
    """Assign rows to buckets (`assign_buckets`) and size each bucket's batches to the budget."""
    return plan_for(buckets, assign_buckets(rows, buckets, geometry, fps, skip_frames), max_tokens, geometry)


def assign_buckets(rows: Sequence[dict], buckets: Sequence[Sequence[int]], geometry: Geometry,
                   fps: float | None = None, skip_frames: int = 0) -> list[int | None]:
    """Each row's bucket (None: shorter than all) from its `width`, `height`, `num_frames`, and `fps`
    when `fps` is given: frames are then counted at that target rate, as the loader samples them.
    Tokens play no part, so a stage given no DiT (encode) may pass the VAE's side alone
    (`Geometry.of_vae`); the trainer sizes batches from the recorded assignment (`plan_for`)."""
    checked = check_buckets(buckets, geometry)
    assignment = []
    for i, row in enumerate(rows):
        w, h, n = row.get("width"), row.get("height"), row.get("num_frames")
        if not all(isinstance(v, int) and v > 0 for v in (w, h, n)):
            raise InputError(f"rows[{i}]: width, height and num_frames must be positive integers, "
                             f"got {w!r}, {h!r}, {n!r}")
        if fps is None:
            available = n - 2 * skip_frames
        else:
            src = source_fps(row)
            if src is None:
                raise InputError(f"rows[{i}]: needs `fps` (or `duration`) to count frames at {fps} fps")
            available = frames_at_fps(n, src, fps, skip_frames)
        assignment.append(choose_bucket(w, h, available, checked))
    dropped = sum(a is None for a in assignment)
    if dropped:
        log.warning("%d of %d rows are shorter than every bucket and are left out", dropped, len(rows))
    return assignment


def plan_for(buckets: Sequence[Sequence[int]], assignment: Sequence[int | None], max_tokens: int,
             geometry: Geometry) -> BucketPlan:
    """The plan of a known assignment (e.g. the one `longvid encode` recorded in a latent index)."""
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise InputError(f"max_tokens must be a positive integer (the per-process token budget), got {max_tokens!r}")
    buckets = check_buckets(buckets, geometry)
    tokens = [geometry.tokens(*b) for b in buckets]
    batch_sizes = [max(1, max_tokens // t) for t in tokens]
    for b, t in enumerate(tokens):
        if t > max_tokens:
            log.warning("bucket %s needs %d tokens per sample, over max_tokens=%d: batch size 1",
                        buckets[b], t, max_tokens)
    for i, a in enumerate(assignment):
        if a is not None and not 0 <= a < len(buckets):
            raise InputError(f"rows[{i}]: bucket {a} is not one of the {len(buckets)} buckets")
    return BucketPlan(buckets, tokens, batch_sizes, list(assignment), max_tokens)


class BucketBatchSampler(ResumableSampling, Sampler[list[int]]):
    """Single-bucket batches of row indices for rank `rank`, in an order that depends only on
    (seed, epoch). drop_last drops each bucket's incomplete global batch; otherwise it is filled by
    wrapping around that bucket's rows."""

    unit = "batches"

    def __init__(self, plan: BucketPlan, rank: int = 0, world_size: int = 1, seed: int = 0,
                 drop_last: bool = True):
        super().__init__(seed, rank, world_size)
        self.plan, self.drop_last = plan, drop_last
        self.members = [np.array([i for i, a in enumerate(plan.assignment) if a == b], np.int64)
                        for b in range(len(plan.buckets))]
        if not self.per_rank():
            raise InputError(f"no bucket has enough rows for one global batch (world_size {world_size}, "
                             f"batch sizes {plan.batch_sizes}, rows {plan.counts()}) with drop_last")

    def ranks_per_position(self) -> int:
        return 1  # every rank takes one batch per step: the position is the global step

    def identity(self) -> dict:
        digest = hashlib.sha256(np.array([-1 if a is None else a for a in self.plan.assignment]).tobytes())
        return {"seed": self.seed, "drop_last": self.drop_last, "assignment": digest.hexdigest()[:16],
                "global_batches": [bs * self.world_size for bs in self.plan.batch_sizes],
                "buckets": [list(b) for b in self.plan.buckets]}

    def per_rank(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        batches = []  # (bucket, global batch)
        for b, members in enumerate(self.members):
            if not len(members):
                continue
            size = self.plan.batch_sizes[b] * self.world_size
            order = rng.permutation(members)
            n = len(order) // size * size if self.drop_last else math.ceil(len(order) / size) * size
            order = np.resize(order, n)
            batches += [(b, order[j:j + size]) for j in range(0, n, size)]
        out = []
        for j in rng.permutation(len(batches)):
            b, batch = batches[j]
            bs = self.plan.batch_sizes[b]
            out.append(batch[self.rank * bs:(self.rank + 1) * bs].tolist())
        return out
