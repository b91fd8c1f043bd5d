"""Samplers for a v-prediction model: DDIM and DPM-Solver++(2M), deterministic (ODE) or stochastic
(SDE), with classifier-free guidance, as the seed's sgm samplers and diffusers' CogVideoX schedulers
step them (seed-analysis §3).

Written in terms of abar (a), with lambda = log sqrt(a / (1 - a)), h = lambda_next - lambda,
x0 = sqrt(a) x - sqrt(1 - a) v and D the (extrapolated) x0:

    DDIM      x' = sqrt((1-a')/(1-a)) x + (sqrt(a') - sqrt(a) sqrt((1-a')/(1-a))) x0
    2M ODE    x' = sqrt((1-a')/(1-a)) x - expm1(-h) sqrt(a') D
    2M SDE    x' = sqrt((1-a')/(1-a)) e^-h x - expm1(-2h) sqrt(a') D + sqrt(1-a') sqrt(-expm1(-2h)) z
    D = x0 on the first step, else (1 + 1/2r) x0 - 1/(2r) x0_prev with r = h_prev / h

The first step starts from abar = 0 (zero terminal SNR): lambda = -inf, so the update re-noises x0
exactly; the last step returns x0. Coefficients are computed in float64 and the latents stay float32
whatever the model's dtype.

Guidance is applied to v; the seed applies it to x0, which is the same thing because x0 is affine in
v with the same x for both branches and the guidance weights sum to one.

Dynamic CFG, w = 1 + scale (1 - cos(pi r^exp)) / 2, where the seed (and diffusers' use_dynamic_cfg)
compute r = (num_steps - t) / num_steps from the *DDPM timestep t* (999, 979, ...), not from the solver
step. r is then a large negative number and w jumps pseudo-randomly within [1, 1 + scale] from step to
step. `dynamic="timestep"` reproduces that (the released models were tuned with it);
`dynamic="step"` uses r = i / num_steps for solver step i, the schedule the formula was written for
(w rising smoothly from 1 to 1 + scale).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from longvid.diffusion.schedule import NoiseSchedule, SamplingPlan, sampling_plan
from longvid.io import InputError

ModelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (x, t (B,), context) -> v
SAMPLERS = ("ddim", "dpmpp_2m", "dpmpp_2m_sde")


@dataclass(frozen=True)
class Guidance:
    scale: float = 6.0  # static: w = scale; dynamic: w = 1 + scale * ramp
    dynamic: str = "none"  # "none" | "timestep" (seed/diffusers quirk) | "step"
    exp: float = 5.0

    def __post_init__(self):
        if self.dynamic not in ("none", "timestep", "step"):
            raise InputError(f"sample.guidance_dynamic={self.dynamic!r}: must be 'none', 'timestep' "
                             "or 'step'")
        if self.dynamic == "timestep" and float(self.exp) != int(self.exp):
            raise InputError(f"sample.guidance_exp={self.exp}: the 'timestep' schedule raises a negative "
                             "number to this power, so it must be an integer")

    @property
    def active(self) -> bool:
        """Whether the unconditional branch is needed at all."""
        return self.dynamic != "none" or self.scale != 1.0

    def weight(self, step: int, num_steps: int, timestep: int) -> float:
        if self.dynamic == "none":
            return float(self.scale)
        r = (num_steps - timestep) / num_steps if self.dynamic == "timestep" else step / num_steps
        return 1 + self.scale * (1 - math.cos(math.pi * r ** self.exp)) / 2


def _lambda(a: torch.Tensor) -> torch.Tensor:
    return ((a / (1 - a)) ** 0.5).log()


def _randn(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    # Drawn on the generator's device, then moved: a CPU-seeded run gives the same noise on any device.
    device = generator.device if generator is not None else like.device
    return torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def _guided_v(model_fn: ModelFn, x: torch.Tensor, t: int, context: torch.Tensor, uncond: torch.Tensor | None,
              w: float | None) -> torch.Tensor:
    """One model evaluation; with guidance the batch is doubled as [uncond; cond], as the seed does."""
    if w is None:
        return model_fn(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device), context).float()
    tt = torch.full((2 * x.shape[0],), t, dtype=torch.long, device=x.device)
    v_u, v_c = model_fn(torch.cat([x, x]), tt, torch.cat([uncond, context])).float().chunk(2)
    return v_u + w * (v_c - v_u)


StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]  # (i, t, x_next, x0)


def sample(model_fn: ModelFn, noise: torch.Tensor, schedule: NoiseSchedule, context: torch.Tensor, *,
           num_steps: int = 50, sampler: str = "dpmpp_2m_sde", guidance: Guidance = Guidance(scale=1.0),
           uncond: torch.Tensor | None = None, generator: torch.Generator | None = None,
           rescale: str = "full", callback: StepCallback | None = None) -> torch.Tensor:
    """Denoise `noise` (pure noise at t = 999) into clean latents.

    model_fn(x, t, context) -> v with t a (B,) long tensor of DDPM timesteps. The unconditional context
    defaults to zeros, the seed's "dropped" text (training zeroes the T5 embedding). `generator`
    feeds the SDE's per-step noise; `callback(i, t, x_next, x0)` sees every step. `rescale` picks
    the training table ("full", diffusers) or the seed's sampler table ("seed"; see sampling_plan).
    """
    if sampler not in SAMPLERS:
        raise InputError(f"sample.sampler={sampler!r}: must be one of {', '.join(SAMPLERS)}")
    plan = sampling_plan(schedule, num_steps, rescale)
    if guidance.active and uncond is None:
        uncond = torch.zeros_like(context)
    x = noise.float()
    x0_prev = None
    for i, t in enumerate(plan.timesteps):
        w = guidance.weight(i, num_steps, t) if guidance.active else None
        v = _guided_v(model_fn, x, t, context, uncond, w)
        a_x0 = plan.abar_x0[i]
        x0 = a_x0 ** 0.5 * x - (1 - a_x0) ** 0.5 * v
        if i == num_steps - 1:  # next abar is 1: every update rule returns x0 itself
            x = x0
        else:
            x = _step(sampler, plan, i, x, x0, x0_prev, generator)
        x0_prev = x0
        if callback is not None:
            callback(i, t, x, x0)
    return x


def _step(sampler: str, plan: SamplingPlan, i: int, x: torch.Tensor, x0: torch.Tensor,
          x0_prev: torch.Tensor | None, generator: torch.Generator | None) -> torch.Tensor:
    a, a_next = plan.abar[i], plan.abar[i + 1]
    ratio = ((1 - a_next) / (1 - a)) ** 0.5
    if sampler == "ddim":
        return ratio * x + (a_next ** 0.5 - a ** 0.5 * ratio) * x0

    h = _lambda(a_next) - _lambda(a)
    d = x0
    if x0_prev is not None:  # second order: extrapolate x0 linearly in lambda
        r = (_lambda(a) - _lambda(plan.abar[i - 1])) / h
        d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
    if sampler == "dpmpp_2m":
        return ratio * x - (-h).expm1() * a_next ** 0.5 * d

    mult_x, mult_d = ratio * (-h).exp(), (-2 * h).expm1() * a_next ** 0.5
    mult_noise = (1 - a_next) ** 0.5 * (1 - (-2 * h).exp()) ** 0.5
    z = _randn(x, generator)
    if x0_prev is not None:
        # The seed and diffusers first draw noise for a first-order candidate they then discard;
        # drawing it too keeps our random stream, hence our samples, identical to theirs.
        z = _randn(x, generator)
    return mult_x * x - mult_d * d + mult_noise * z
