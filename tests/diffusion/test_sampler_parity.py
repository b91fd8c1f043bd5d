"""Our samplers against diffusers' CogVideoX schedulers over full 50-step trajectories (fp32).

The model is a fixed, deterministic function of (x, t, context), so any difference in timesteps,
coefficients, guidance or noise order shows up in the trajectory.
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import (CogVideoXDDIMScheduler, CogVideoXDPMScheduler, DDIMScheduler,
                       DPMSolverMultistepScheduler)

from longvid.diffusion.samplers import Guidance, sample
from longvid.diffusion.schedule import NoiseSchedule

SHAPE = (2, 3, 4, 6, 6)  # (B, F, C, H, W) as the DiT takes latents


def fake_model(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """Deterministic 'v-prediction': mixes x, a nonlinearity of x, the timestep and the text."""
    s = (t.float() / 1000).reshape(-1, *([1] * (x.ndim - 1)))
    text = context.mean(dim=(1, 2)).reshape(-1, *([1] * (x.ndim - 1)))
    return 0.8 * x - 0.3 * torch.tanh(x) * s + 0.5 * text + 0.1 * torch.cos(3 * s)


def cogvideox_config(shift: float) -> dict:
    # The scheduler_config.json shipped with THUDM/CogVideoX-2b (shift 3) / -5b (shift 1).
    return dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                clip_sample=False, set_alpha_to_one=True, steps_offset=0, prediction_type="v_prediction",
                timestep_spacing="trailing", rescale_betas_zero_snr=True, snr_shift_scale=shift)


def diffusers_loop(scheduler, noise, context, uncond, steps, scale, dynamic, generator):
    """diffusers' CogVideoXPipeline denoising loop, stripped to the scheduler calls."""
    scheduler.set_timesteps(steps)
    latents, old_x0, traj = noise.clone(), None, []
    for i, t in enumerate(scheduler.timesteps):
        v = fake_model(torch.cat([latents] * 2), t.expand(2 * latents.shape[0]), torch.cat([uncond, context]))
        w = scale
        if dynamic:
            w = 1 + scale * ((1 - math.cos(math.pi * ((steps - t.item()) / steps) ** 5.0)) / 2)
        v_u, v_c = v.float().chunk(2)
        v = v_u + w * (v_c - v_u)
        if isinstance(scheduler, CogVideoXDPMScheduler):
            latents, old_x0 = scheduler.step(v, old_x0, t, scheduler.timesteps[i - 1] if i > 0 else None,
                                             latents, generator=generator, return_dict=False)
        elif isinstance(scheduler, DPMSolverMultistepScheduler):
            latents = scheduler.step(v, t, latents, generator=generator, return_dict=False)[0]
        else:
            latents = scheduler.step(v, t, latents, return_dict=False)[0]
        traj.append(latents.clone())
    return traj


def ours(noise, context, uncond, steps, scale, dynamic, sampler, shift, generator):
    schedule = shift if isinstance(shift, NoiseSchedule) else NoiseSchedule.cogvideox(shift)
    traj = []
    guidance = Guidance(scale=scale, dynamic="timestep" if dynamic else "none")
    out = sample(fake_model, noise, schedule, context, num_steps=steps, sampler=sampler,
                 guidance=guidance, uncond=uncond, generator=generator,
                 callback=lambda i, t, x, x0: traj.append(x.clone()))
    assert torch.equal(out, traj[-1])
    return traj


def inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(SHAPE, generator=g)
    context = torch.randn(SHAPE[0], 5, 8, generator=g)
    return noise, context, torch.zeros_like(context)


def assert_trajectories_match(ref, got, tol=1e-5):
    assert len(ref) == len(got)
    for i, (a, b) in enumerate(zip(ref, got)):
        err = (a - b).abs().max().item()
        assert err <= tol, f"step {i}: max |diff| = {err:.3g}"


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("dynamic", [False, True])
def test_dpmpp_2m_sde_matches_cogvideox_dpm_scheduler(shift, dynamic):
    noise, context, uncond = inputs()
    sched = CogVideoXDPMScheduler(**cogvideox_config(shift))
    ref = diffusers_loop(sched, noise, context, uncond, 50, 6.0, dynamic, torch.Generator().manual_seed(7))
    got = ours(noise, context, uncond, 50, 6.0, dynamic, "dpmpp_2m_sde", shift,
               torch.Generator().manual_seed(7))
    assert_trajectories_match(ref, got)
    # The stochastic sampler really is stochastic: another noise seed gives another sample.
    other = ours(noise, context, uncond, 50, 6.0, dynamic, "dpmpp_2m_sde", shift,
                 torch.Generator().manual_seed(8))
    assert (other[-1] - got[-1]).abs().max() > 1e-2


@pytest.mark.parametrize("steps", [50, 25, 10])
def test_ddim_matches_cogvideox_ddim_scheduler(steps):
    noise, context, uncond = inputs(1)
    sched = CogVideoXDDIMScheduler(**cogvideox_config(3.0))
    ref = diffusers_loop(sched, noise, context, uncond, steps, 6.0, True, None)
    got = ours(noise, context, uncond, steps, 6.0, True, "ddim", 3.0, None)
    assert_trajectories_match(ref, got)


def test_ddim_matches_plain_ddim_scheduler_configured_the_cogvideox_way():
    """DDIMScheduler has no SNR shift, so this is the 5B schedule (shift 1); eta = 0."""
    cfg = {k: v for k, v in cogvideox_config(1.0).items() if k != "snr_shift_scale"}
    noise, context, uncond = inputs(2)
    ref = diffusers_loop(DDIMScheduler(**cfg), noise, context, uncond, 50, 6.0, False, None)
    got = ours(noise, context, uncond, 50, 6.0, False, "ddim", 1.0, None)
    assert_trajectories_match(ref, got)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("steps", [50, 20])
def test_dpmpp_2m_ode_matches_dpmsolver_multistep(steps):
    """No CogVideoX scheduler has the deterministic 2M; DPMSolverMultistepScheduler (dpmsolver++, order 2,
    midpoint) does, but it cannot start from abar = 0 (it clamps abar[999] to 2**-24). So both run the
    shifted scaled-linear table without the zero-SNR rescale, fed to diffusers as trained betas."""
    ref_schedule = NoiseSchedule.cogvideox(3.0, zero_terminal_snr=False)
    abar = ref_schedule.alphas_cumprod
    betas = 1 - abar / torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])
    sched = DPMSolverMultistepScheduler(trained_betas=betas.numpy(), prediction_type="v_prediction",
                                        algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
                                        timestep_spacing="trailing", final_sigmas_type="zero",
                                        lower_order_final=True)
    # Our sampler on diffusers' own (float32-rebuilt) table: this test is about the update rule.
    mine = NoiseSchedule(sched.alphas_cumprod.double(), sched.alphas_cumprod.double(), 3.0, False)
    noise, context, uncond = inputs(3)
    ref = diffusers_loop(sched, noise, context, uncond, steps, 6.0, False, None)
    got = ours(noise, context, uncond, steps, 6.0, False, "dpmpp_2m", mine, None)
    assert_trajectories_match(ref, got)
