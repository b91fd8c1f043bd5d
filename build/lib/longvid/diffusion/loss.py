"""The training objective (seed-analysis §3): v-prediction, stratified timesteps, text dropout.

The seed's VideoDiffusionLoss weighs the x0 error by w = 1 / (1 - abar):
    x0_hat - x0 = sqrt(1 - abar) (v - v_hat)   =>   w (x0_hat - x0)^2 = (v - v_hat)^2,
so it is plain MSE on v; we compute it that way, which avoids multiplying a tiny x0 error by
w ~ 1e3 near t = 0 (tests check the two forms agree).
"""

from __future__ import annotations

from typing import Callable

import torch

from longvid.diffusion.schedule import NoiseSchedule


def timestep_band(rank: int, world_size: int, num_timesteps: int = 1000) -> tuple[int, int]:
    """[lo, hi) of the timesteps `rank` draws from, the seed's DiscreteSampling(uniform_sampling=True).

    Ranks are split into G groups of consecutive ranks, G the largest divisor of world_size that also
    divides num_timesteps; group g covers timesteps [g T/G, (g+1) T/G). So a global batch covers the
    whole range evenly (32 ranks -> 8 bands of 125; 6 ranks -> 2 bands of 500, 3 ranks each).
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank}: must be in [0, world_size={world_size})")
    ranks_per_group = next(i for i in range(1, world_size + 1)
                           if world_size % i == 0 and num_timesteps % (world_size // i) == 0)
    groups = world_size // ranks_per_group
    width = num_timesteps // groups
    g = rank // ranks_per_group
    return g * width, (g + 1) * width


def sample_timesteps(n: int, *, rank: int = 0, world_size: int = 1, stratified: bool = True,
                     generator: torch.Generator | None = None, num_timesteps: int = 1000) -> torch.Tensor:
    """(n,) long DDPM timesteps for this rank's micro-batch."""
    lo, hi = timestep_band(rank, world_size, num_timesteps) if stratified else (0, num_timesteps)
    return torch.randint(lo, hi, (n,), generator=generator)


def drop_text(context: torch.Tensor, rate: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero each sample's whole text embedding with probability `rate` (the seed's ucg_rate, 0.1).

    The unconditional input is all-zeros, not the embedding of an empty prompt; the sampler's
    default unconditional context is the same zeros.
    """
    if rate <= 0:
        return context
    keep = torch.bernoulli(torch.full((context.shape[0],), 1.0 - rate), generator=generator)
    return context * keep.to(context.device, context.dtype).reshape(-1, *([1] * (context.ndim - 1)))


def v_loss(v_pred: torch.Tensor, v_target: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error, (B,), in float32 whatever the model's dtype."""
    return (v_pred.float() - v_target.float()).pow(2).flatten(1).mean(dim=1)


def diffusion_loss(model_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                   schedule: NoiseSchedule, x0: torch.Tensor, context: torch.Tensor, t: torch.Tensor,
                   noise: torch.Tensor) -> torch.Tensor:
    """Noise clean latents x0 to timesteps t, predict v, return the per-sample loss (B,)."""
    x0, noise = x0.float(), noise.float()
    x_t = schedule.add_noise(x0, noise, t)
    return v_loss(model_fn(x_t, t, context), schedule.velocity(x0, noise, t))
