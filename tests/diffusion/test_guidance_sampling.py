"""Guidance schedules and the sampling loop's contract with the model."""

from __future__ import annotations

import math

import pytest
import torch

from longvid.diffusion.samplers import Guidance, sample
from longvid.diffusion.schedule import NoiseSchedule, sampling_timesteps

SCHEDULE = NoiseSchedule.cogvideox(1.0)


def test_timestep_quirk_versus_step_schedule():
    quirk, step = Guidance(6.0, "timestep"), Guidance(6.0, "step")
    ts = sampling_timesteps(50)
    wq = [quirk.weight(i, 50, t) for i, t in enumerate(ts)]
    ws = [step.weight(i, 50, t) for i, t in enumerate(ts)]
    # The seed's formula fed the DDPM timestep: r = (50 - 999) / 50, so w hops around inside [1, 7].
    assert wq[0] == 1 + 6 * (1 - math.cos(math.pi * ((50 - 999) / 50) ** 5)) / 2
    assert all(1 <= w <= 7 for w in wq) and max(abs(a - b) for a, b in zip(wq, wq[1:])) > 1
    # Fed the solver step, the same formula rises smoothly from 1 towards 7.
    assert ws[0] == 1 and all(a <= b for a, b in zip(ws, ws[1:])) and 6.5 < ws[-1] < 7
    assert Guidance(4.5).weight(3, 50, 900) == 4.5
    assert not Guidance(1.0).active and Guidance(1.0, "step").active
    with pytest.raises(ValueError, match="sample.guidance_exp=2.5"):
        Guidance(6.0, "timestep", exp=2.5)
    with pytest.raises(ValueError, match="sample.guidance_dynamic='cosine'"):
        Guidance(6.0, "cosine")


def test_guidance_batches_uncond_then_cond_and_defaults_to_zero_text():
    calls = []

    def model(x, t, c):
        calls.append((x.shape[0], t.tolist(), c.clone()))
        return 0.5 * x + c.mean(dim=(1, 2)).reshape(-1, 1, 1, 1, 1)

    noise = torch.randn(2, 3, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    ctx = torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(1))
    out = sample(model, noise, SCHEDULE, ctx, num_steps=5, sampler="dpmpp_2m", guidance=Guidance(3.0))
    assert len(calls) == 5 and all(n == 4 for n, _, _ in calls)
    assert calls[0][1] == [999] * 4 and [c[1][0] for c in calls] == sampling_timesteps(5)
    assert torch.equal(calls[0][2][:2], torch.zeros_like(ctx)) and torch.equal(calls[0][2][2:], ctx)
    explicit = sample(model, noise, SCHEDULE, ctx, num_steps=5, sampler="dpmpp_2m", guidance=Guidance(3.0),
                      uncond=torch.zeros_like(ctx))
    assert torch.equal(out, explicit)
    calls.clear()
    plain = sample(model, noise, SCHEDULE, ctx, num_steps=5, sampler="dpmpp_2m")  # scale 1: no uncond pass
    assert len(calls) == 5 and all(n == 2 for n, _, _ in calls)
    assert not torch.allclose(plain, out)


def test_samplers_recover_a_point_mass():
    """If the data is a single point x*, the exact v-prediction makes every sampler land on x*."""
    target = torch.randn(1, 2, 3, 4, 4, generator=torch.Generator().manual_seed(2))

    def exact_v(x, t, c):  # v = (sqrt(a) x_t - x0) / sqrt(1 - a)
        a = SCHEDULE.alphas_cumprod[t].float().reshape(-1, 1, 1, 1, 1)
        return (a.sqrt() * x - target) / (1 - a).sqrt()

    noise = torch.randn(1, 2, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    for sampler in ("ddim", "dpmpp_2m", "dpmpp_2m_sde"):
        out = sample(exact_v, noise, SCHEDULE, torch.zeros(1, 1, 1), num_steps=10, sampler=sampler,
                     generator=torch.Generator().manual_seed(4))
        torch.testing.assert_close(out, target, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="sample.sampler='euler'"):
        sample(exact_v, noise, SCHEDULE, torch.zeros(1, 1, 1), sampler="euler")
