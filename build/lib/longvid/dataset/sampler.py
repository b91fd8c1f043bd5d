"""Deterministic, resumable sampling: the order depends only on (seed, epoch), the position is state.

A resumed run sees exactly the remaining items of the interrupted one, and rank r of a world of W
takes the r-th block of each global batch, so W processes together see the single-process order.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
from torch.utils.data import Sampler

from longvid.io import InputError


class ResumableSampling:
    """Epoch + position bookkeeping shared by the samplers: `advance` what was consumed, save and load
    it, and start the next epoch by itself when the current one is used up."""

    unit = "items"

    def __init__(self, seed: int, rank: int, world_size: int):
        if not 0 <= rank < world_size:
            raise InputError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.epoch, self.position = 0, 0

    def per_rank(self) -> list:
        raise NotImplementedError

    def identity(self) -> dict:
        """What a saved position is only valid for (checked on load)."""
        raise NotImplementedError

    def ranks_per_position(self) -> int:
        """Global units per local unit of position: ranks split the items, but step through batches
        together."""
        return self.world_size

    def set_epoch(self, epoch: int) -> None:
        """Move to `epoch` from its start; the current epoch keeps its position (a resumed loop calls
        this with the epoch it was in)."""
        if int(epoch) != self.epoch:
            self.epoch, self.position = int(epoch), 0

    def advance(self, n: int = 1) -> None:
        self.position += int(n)

    def __iter__(self) -> Iterator:
        order = self.per_rank()
        if self.position >= len(order):
            self.epoch, self.position = self.epoch + 1, 0
            order = self.per_rank()
        return iter(order[self.position:])

    def __len__(self) -> int:
        n = len(self.per_rank())
        return n - self.position if self.position < n else n

    def state_dict(self) -> dict:
        # The position is stored globally (all ranks together) so a run may resume on another
        # world size with the same global batch.
        return {"epoch": self.epoch, "consumed": self.position * self.ranks_per_position(), **self.identity()}

    def load_state_dict(self, state: dict) -> None:
        for key, value in self.identity().items():
            if state.get(key) != value:
                raise InputError(f"sampler state was saved with {key}={state.get(key)!r}, this run has "
                                 f"{key}={value!r}; the data order cannot be resumed")
        consumed, share = int(state["consumed"]), self.ranks_per_position()
        if consumed % share:
            raise InputError(f"sampler state: {consumed} {self.unit} consumed is not a whole number per "
                             f"rank for world_size={self.world_size}")
        self.epoch, self.position = int(state["epoch"]), consumed // share


class ResumableDistributedSampler(ResumableSampling, Sampler[int]):
    """Rank `rank`'s share of a (seed, epoch) permutation of range(num_items), in per-rank batches of
    `batch_size` (the trainer's micro batch); drop_last drops the tail that does not fill a global
    batch, otherwise the tail is filled by wrapping around the permutation."""

    def __init__(self, num_items: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = True, batch_size: int = 1):
        super().__init__(seed, rank, world_size)
        if num_items < 1 or batch_size < 1:
            raise InputError(f"num_items and batch_size must be positive, got {num_items}, {batch_size}")
        self.num_items, self.shuffle, self.drop_last = num_items, shuffle, drop_last
        self.batch_size = batch_size
        block = batch_size * world_size
        self.total = num_items // block * block if drop_last else math.ceil(num_items / block) * block
        if self.total == 0:
            raise InputError(f"{num_items} items do not fill one global batch of {block} "
                             f"(batch_size {batch_size} x world_size {world_size}) with drop_last")

    def identity(self) -> dict:
        return {"seed": self.seed, "num_items": self.num_items, "shuffle": self.shuffle,
                "drop_last": self.drop_last, "global_batch": self.batch_size * self.world_size}

    def global_order(self, epoch: int) -> np.ndarray:
        """Every rank's items of `epoch`, in global-batch order."""
        order = (np.random.default_rng([self.seed, epoch]).permutation(self.num_items) if self.shuffle
                 else np.arange(self.num_items))
        return np.resize(order, self.total)  # truncates (drop_last) or wraps around

    def per_rank(self) -> list[int]:
        b, w = self.batch_size, self.world_size
        k = np.arange(self.total // w)
        return self.global_order(self.epoch)[(k // b) * b * w + self.rank * b + k % b].tolist()
