"""CogVideoX's noise schedule and the v-prediction algebra (seed-analysis §3).

    betas:   "scaled linear", sqrt(beta) linear from sqrt(0.00085) to sqrt(0.012) over 1000 steps
    abar:    cumprod(1 - beta)
    shift:   abar' = abar / (s + (1 - s) abar)      (logSNR lowered by log s; s = 3 for 2B, 1 for 5B)
    rescale: sqrt(abar') shifted and scaled so the last value is 0 (zero terminal SNR) and the first
             is unchanged                           (Lin et al. 2023, Algorithm 1)

Index t in 0..999 is the DDPM timestep, 0 the cleanest; abar[999] == 0, so the last step is pure
noise and only a v- (not eps-) prediction is defined there. The table is kept in float64, as
diffusers keeps it, and coefficients are cast to the data's dtype when used.

The network predicts v = sqrt(abar) eps - sqrt(1 - abar) x0; x_t = sqrt(abar) x0 + sqrt(1 - abar) eps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from longvid.io import InputError


def scaled_linear_betas(num_timesteps: int = 1000, beta_start: float = 0.00085,
                        beta_end: float = 0.012) -> torch.Tensor:
    return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_timesteps, dtype=torch.float64) ** 2


def shift_snr(alphas_cumprod: torch.Tensor, shift_scale: float) -> torch.Tensor:
    """SNR' = SNR / s. Applied before the zero-SNR rescale, as both the seed and diffusers do."""
    return alphas_cumprod / (shift_scale + (1 - shift_scale) * alphas_cumprod)


def rescale_zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Move sqrt(abar) so its last entry is exactly 0 while its first entry keeps its value."""
    s = alphas_cumprod.sqrt()
    first, last = s[0].clone(), s[-1].clone()
    s = (s - last) * (first / (first - last))
    return s ** 2


def expand(coef: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-sample coefficients (B,) -> (B, 1, ..., 1) in `like`'s dtype and device."""
    return coef.to(like.device, like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


@dataclass(frozen=True)
class NoiseSchedule:
    alphas_cumprod: torch.Tensor  # (T,) float64, abar per DDPM timestep
    shifted: torch.Tensor  # (T,) float64, abar after the SNR shift but before the zero-SNR rescale
    shift_scale: float = 1.0
    zero_terminal_snr: bool = True

    @classmethod
    def cogvideox(cls, snr_shift_scale: float = 1.0, num_timesteps: int = 1000, beta_start: float = 0.00085,
                  beta_end: float = 0.012, zero_terminal_snr: bool = True) -> "NoiseSchedule":
        abar = torch.cumprod(1.0 - scaled_linear_betas(num_timesteps, beta_start, beta_end), dim=0)
        shifted = shift_snr(abar, snr_shift_scale)
        abar = rescale_zero_terminal_snr(shifted) if zero_terminal_snr else shifted
        return cls(abar, shifted, float(snr_shift_scale), zero_terminal_snr)

    @property
    def num_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    def coefs(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sqrt(abar_t), sqrt(1 - abar_t)) for timesteps t (B,), shaped to broadcast against `like`."""
        abar = self.alphas_cumprod[t.long().cpu()]
        return expand(abar.sqrt(), like), expand((1 - abar).sqrt(), like)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s = self.coefs(t, x0)
        return a * x0 + s * noise

    def velocity(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s = self.coefs(t, x0)
        return a * noise - s * x0

    def x0_from_v(self, x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s = self.coefs(t, x_t)
        return a * x_t - s * v

    def eps_from_v(self, x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s = self.coefs(t, x_t)
        return s * x_t + a * v


def sampling_timesteps(num_steps: int, num_timesteps: int = 1000) -> list[int]:
    """The seed's "roughly equally spaced" steps, noisiest first: floor(999 - k * 999 / n), k < n.

    For n dividing 1000 (10, 20, 25, 50, 100, ...) this equals diffusers' "trailing" spacing
    (999, 979, ..., 19 for n = 50). For other n the two differ by one here and there, and diffusers
    additionally steps to t - 1000 // n instead of to the next listed timestep; we always step to
    the next listed timestep, as the seed does.
    """
    if not 0 < num_steps <= num_timesteps:
        raise InputError(f"sample.num_steps={num_steps}: must be in [1, {num_timesteps}]")
    return [int(t) for t in np.linspace(num_timesteps - 1, 0, num_steps, endpoint=False).astype(np.int64)]


@dataclass(frozen=True)
class SamplingPlan:
    """What a sampler walks: timesteps (noisiest first), abar per step for the update coefficients
    (plus a final 1.0, the clean end), and abar per step for turning v into x0."""

    timesteps: list[int]
    abar: torch.Tensor  # (n + 1,) float64
    abar_x0: torch.Tensor  # (n,) float64


def sampling_plan(schedule: NoiseSchedule, num_steps: int, rescale: str = "full") -> SamplingPlan:
    """rescale="full": every coefficient from the training table (diffusers' CogVideoX schedulers).

    rescale="seed": what the seed's sgm sampler actually computes. It re-applies the zero-SNR rescale
    to the *sampled subset* of abar (so the anchor is abar at the smallest sampled timestep, 19 for
    50 steps, instead of at 0), and its DiscreteDenoiser then snaps each of those values to the nearest
    entry of the full training table to build x0 from v - often the entry for t - 1, while the network
    is told t. Both effects are ~1e-3 on the coefficients; kept for reproducing seed samples exactly.
    """
    ts = sampling_timesteps(num_steps, schedule.num_timesteps)
    idx = torch.tensor(ts)
    one = torch.ones(1, dtype=torch.float64)
    if rescale == "full":
        abar = schedule.alphas_cumprod[idx]
        return SamplingPlan(ts, torch.cat([abar, one]), abar)
    if rescale != "seed":
        raise InputError(f"sample.rescale={rescale!r}: must be 'full' or 'seed'")
    sub = schedule.shifted[idx]
    if schedule.zero_terminal_snr:
        sub = rescale_zero_terminal_snr(sub.flip(0)).flip(0)  # anchors: smallest and largest sampled t
    table = schedule.alphas_cumprod.sqrt()
    nearest = (sub.sqrt()[:, None] - table[None, :]).abs().argmin(dim=1)
    return SamplingPlan(ts, torch.cat([sub, one]), schedule.alphas_cumprod[nearest])
