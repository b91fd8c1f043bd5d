"""What the trainer iterates over: clips decoded and encoded on the fly, or the `encode` cache.

Either way a batch becomes (latents (B, T, C, h, w), context (B, L, D)) through
`latents_and_context`, so the loop does not care where they came from.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Dataset

from longvid.dataset.loader import VideoClipDataset
from longvid.dataset.sampler import ResumableDistributedSampler
from longvid.io import InputError, read_jsonl

log = logging.getLogger(__name__)


class LatentCacheDataset(Dataset):
    """Rows of a latent-cache index (see longvid.encode): each points at one safetensors file
    holding `latents` (T, C, h, w) and `context` (L, D) of one clip."""

    def __init__(self, index: Path):
        self.index = Path(index)
        self.rows = list(read_jsonl(index))
        if not self.rows:
            raise InputError(f"{index}: the latent cache index is empty")

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:  # cached latents are one fixed window per clip
        pass

    def __getitem__(self, i: int) -> dict:
        path = self.index.parent / self.rows[i]["file"]
        try:
            tensors = load_file(path)
        except Exception as e:  # noqa: BLE001 - name the file, whatever safetensors raised
            raise InputError(f"{path}: unreadable latent cache entry ({type(e).__name__}: {e})") from None
        return {"latents": tensors["latents"], "context": tensors["context"], "id": self.rows[i]["id"]}

    @staticmethod
    def latents_and_context(batch: dict, encoders, device) -> tuple[torch.Tensor, torch.Tensor]:
        return batch["latents"].to(device), batch["context"].to(device)


class OnTheFly:
    """Adds encoding to VideoClipDataset batches (VAE + text encoder, no gradients)."""

    @staticmethod
    @torch.no_grad()
    def latents_and_context(batch: dict, encoders, device) -> tuple[torch.Tensor, torch.Tensor]:
        video = batch["video"].to(device).permute(0, 2, 1, 3, 4)  # (B, F, 3, H, W) -> (B, 3, F, H, W)
        latents = encoders.vae.encode(video).permute(0, 2, 1, 3, 4)  # -> (B, T, C, h, w) for the DiT
        return latents, encoders.text(list(batch["text"])).to(device)


class ClipData(VideoClipDataset, OnTheFly):
    pass


def bucketed_loader(exp: dict, dataset_dir: Path, latents: Path | None, info, geometry, check_frames):
    """Loader over `data.buckets`: batches of one (frames, height, width) each, sized to max_tokens."""
    from longvid.dataset.buckets import BucketBatchSampler, plan_buckets, plan_for

    d, t = exp["data"], exp["train"]
    for i, (frames, _, _) in enumerate(d["buckets"]):
        try:
            check_frames(frames)
        except InputError as e:
            raise InputError(f"data.buckets[{i}]: {e}") from None
    if latents is not None:  # `longvid encode` encoded each clip at its bucket's size and recorded the bucket
        dataset = LatentCacheDataset(latents)
        if any("bucket" not in row for row in dataset.rows):
            raise InputError(f"{latents}: written without data.buckets; run `longvid encode` with them")
        plan = plan_for(d["buckets"], [row["bucket"] for row in dataset.rows], d["max_tokens"], geometry)
    else:
        dataset = ClipData(Path(dataset_dir) / "train.jsonl", root=dataset_dir, num_frames=d["num_frames"],
                           fps=d["fps"], height=d["height"], width=d["width"], text_key=d["text_key"],
                           seed=t["seed"], temporal_compression=geometry.temporal, decoder=d["decoder"])
        plan = plan_buckets(dataset.rows, d["buckets"], d["max_tokens"], geometry, fps=d["fps"])
        dataset.set_sizes(plan.row_sizes)
    sampler = BucketBatchSampler(plan, info.rank, info.world_size, seed=t["seed"])
    if info.is_main:
        log.info("buckets: %s", plan.summary())
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=d["num_workers"])
    return loader, sampler, dataset


def make_loader(exp: dict, dataset_dir: Path, latents: Path | None, info, geometry, check_frames=None):
    """(loader, resumable sampler, dataset). `geometry` (runtime.Geometry of the built VAE and DiT)
    sizes bucket batches and short-clip padding; `check_frames(num_frames)` validates a bucket's clip
    length against the model's geometry (attention windows)."""
    d, t = exp["data"], exp["train"]
    if d.get("buckets"):
        return bucketed_loader(exp, dataset_dir, latents, info, geometry,
                               check_frames or (lambda frames: None))
    if latents is not None:
        dataset = LatentCacheDataset(latents)
    else:
        dataset = ClipData(Path(dataset_dir) / "train.jsonl", root=dataset_dir, num_frames=d["num_frames"],
                           fps=d["fps"], height=d["height"], width=d["width"], text_key=d["text_key"],
                           seed=t["seed"], temporal_compression=geometry.temporal, decoder=d["decoder"])
    sampler = ResumableDistributedSampler(len(dataset), info.rank, info.world_size, seed=t["seed"],
                                          batch_size=t["micro_batch"])
    loader = DataLoader(dataset, batch_size=t["micro_batch"], sampler=sampler, num_workers=d["num_workers"],
                        drop_last=True)
    return loader, sampler, dataset
