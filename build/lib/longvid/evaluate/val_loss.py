"""Held-out clips, as the model sees them, and the diffusion loss on them at fixed timesteps.

The first `evaluate.val_clips` rows of `val.jsonl` are decoded exactly as training decodes clips
(fps, 8N+1 frames, resize + center crop), but from the clip's start rather than a random window, so
every evaluation of every checkpoint sees the same pixels. Each clip's noise comes from
(evaluate.seed, clip index) and is reused at every timestep: loss differences between checkpoints are
the model's, not the noise draw's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from longvid.io import InputError
from longvid.video import to_uint8

log = logging.getLogger(__name__)


@dataclass
class ValClip:
    id: str
    text: str
    video: torch.Tensor  # (F, 3, H, W) in [-1, 1]

    @property
    def frames(self) -> np.ndarray:
        return to_uint8(self.video)


def load_val_clips(exp: dict, dataset_dir: Path, count: int) -> list[ValClip]:
    """The first `count` clips of the dataset's validation split (fewer if it has fewer)."""
    from longvid.dataset.loader import VideoClipDataset

    d = exp["data"]
    jsonl = Path(dataset_dir) / "val.jsonl"
    if not jsonl.is_file() or not jsonl.read_text().strip():
        raise InputError(f"{jsonl}: no validation clips (raise the dataset's val_fraction)")
    data = VideoClipDataset(jsonl, root=dataset_dir, num_frames=d["num_frames"], fps=d["fps"],
                            height=d["height"], width=d["width"], text_key=d["text_key"], random_start=False,
                            decoder=d["decoder"])
    clips = []
    for i in range(min(count, len(data))):
        item = data[i]
        clips.append(ValClip(str(item["id"]), str(item["text"]), item["video"]))
    return clips


@torch.no_grad()
def validation_loss(model, encoders, schedule, clips: list[ValClip], timesteps: list[int], seed: int,
                    device: torch.device, precision: str = "fp32") -> dict:
    """{"clips", "timesteps", "per_timestep": {t: mean loss}, "mean"} over `clips`."""
    from longvid.diffusion.loss import diffusion_loss

    losses = {t: [] for t in timesteps}
    i2v = model.config.in_channels > model.config.out_channels
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    for i, clip in enumerate(clips):
        video = clip.video.to(device)[None].permute(0, 2, 1, 3, 4)  # (1, 3, F, H, W)
        x0 = encoders.vae.encode(video).permute(0, 2, 1, 3, 4)  # (1, T, C, h, w)
        context = encoders.text([clip.text]).to(device)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed + i)).to(device)
        image = None
        if i2v:  # condition on the clip's own first-frame latent, as I2V sampling does
            image = torch.zeros_like(x0)
            image[:, :1] = x0[:, :1]

        def model_fn(x, t, ctx):
            return model(x, t, ctx, image_latent=image)

        for t in timesteps:
            with autocast:
                loss = diffusion_loss(model_fn, schedule, x0, context, torch.tensor([t], device=device), noise)
            losses[t].append(float(loss.item()))
    per_t = {str(t): float(np.mean(v)) for t, v in losses.items()}
    return {"clips": len(clips), "timesteps": list(timesteps), "per_timestep": per_t,
            "mean": float(np.mean(list(per_t.values())))}
