"""The schedule against diffusers' CogVideoX tables; the loss, timestep sampling and text dropout."""

from __future__ import annotations

import pytest
import torch
from diffusers import CogVideoXDPMScheduler

from longvid.diffusion.loss import diffusion_loss, drop_text, sample_timesteps, timestep_band, v_loss
from longvid.diffusion.schedule import NoiseSchedule, sampling_plan, sampling_timesteps


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_schedule_equals_diffusers_table(shift):
    ref = CogVideoXDPMScheduler(snr_shift_scale=shift, rescale_betas_zero_snr=True,
                                prediction_type="v_prediction")
    ours = NoiseSchedule.cogvideox(shift)
    torch.testing.assert_close(ours.alphas_cumprod, ref.alphas_cumprod, rtol=0, atol=1e-15)
    assert ours.alphas_cumprod[-1] == 0  # zero terminal SNR
    assert abs(ours.alphas_cumprod[0] - ours.shifted[0]) < 1e-15  # the rescale keeps the start


def test_snr_shift_divides_snr():
    plain = NoiseSchedule.cogvideox(1.0, zero_terminal_snr=False)
    shifted = NoiseSchedule.cogvideox(3.0, zero_terminal_snr=False)
    snr = lambda a: a / (1 - a)  # noqa: E731
    torch.testing.assert_close(snr(shifted.alphas_cumprod), snr(plain.alphas_cumprod) / 3, rtol=1e-12, atol=0)


def test_v_prediction_algebra_roundtrips():
    s = NoiseSchedule.cogvideox(3.0)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 2, 3, 5, 5, generator=g), torch.randn(4, 2, 3, 5, 5, generator=g)
    t = torch.tensor([0, 400, 998, 999])
    x_t, v = s.add_noise(x0, noise, t), s.velocity(x0, noise, t)
    torch.testing.assert_close(s.x0_from_v(x_t, v, t), x0, atol=1e-5, rtol=0)
    torch.testing.assert_close(s.eps_from_v(x_t, v, t), noise, atol=1e-5, rtol=0)
    torch.testing.assert_close(x_t[3], noise[3])  # t = 999 is pure noise


def test_sampling_timesteps_match_diffusers_trailing_for_divisors_of_1000():
    ref = CogVideoXDPMScheduler(timestep_spacing="trailing")
    for n in (10, 25, 50, 100):
        ref.set_timesteps(n)
        assert sampling_timesteps(n) == ref.timesteps.tolist()
    assert sampling_timesteps(50)[:3] == [999, 979, 959] and sampling_timesteps(50)[-1] == 19
    # Not a divisor: the seed's floor(999 - 999 k / n), strictly decreasing, noisiest first.
    ts = sampling_timesteps(30)
    assert ts[0] == 999 and ts[1] == 965 and all(a > b for a, b in zip(ts, ts[1:]))


def test_seed_rescale_plan_reanchors_on_sampled_subset():
    s = NoiseSchedule.cogvideox(3.0)
    full, seed = sampling_plan(s, 50, "full"), sampling_plan(s, 50, "seed")
    assert seed.abar[0] == 0 and seed.abar[-1] == 1 and full.abar[-1] == 1
    assert abs(seed.abar[-2] - s.shifted[19]) < 1e-15  # the smallest sampled t keeps its un-rescaled value
    diff = (seed.abar[:-1] - full.abar[:-1]).abs().max().item()
    assert 1e-4 < diff < 1e-2  # a real, small difference
    table = s.alphas_cumprod.sqrt()
    for a, a_x0 in zip(seed.abar[:-1], seed.abar_x0):  # x0 uses the nearest training-table entry
        assert (a.sqrt() - a_x0.sqrt()).abs() == (table - a.sqrt()).abs().min()
    assert (seed.abar_x0 != full.abar_x0).any()  # ... which is not always the entry for the same t
    assert sampling_plan(s, 1000, "seed").abar[:-1].equal(s.alphas_cumprod.flip(0))


def test_loss_is_the_seeds_weighted_x0_loss():
    s = NoiseSchedule.cogvideox(1.0)
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(3, 2, 4, 6, 6, generator=g), torch.randn(3, 2, 4, 6, 6, generator=g)
    context = torch.randn(3, 7, 8, generator=g)
    t = torch.tensor([0, 500, 999])
    model = lambda x, tt, c: 0.7 * x + c.mean()  # noqa: E731
    ours = diffusion_loss(model, s, x0, context, t, noise)
    # The seed: x0_hat = sqrt(a) x_t - sqrt(1-a) v_hat, loss = mean(w (x0_hat - x0)^2), w = 1 / (1 - a).
    a = s.alphas_cumprod[t].float().reshape(-1, 1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    x0_hat = a.sqrt() * x_t - (1 - a).sqrt() * model(x_t, t, context)
    seed = ((x0_hat - x0) ** 2 / (1 - a)).flatten(1).mean(1)
    torch.testing.assert_close(ours, seed, rtol=2e-3, atol=0)  # t = 0: w = 1/(1-a) ~ 1e3 amplifies fp32 error
    assert ours.shape == (3,) and (ours > 0).all()
    assert v_loss(s.velocity(x0, noise, t), s.velocity(x0, noise, t)).abs().max() == 0


@pytest.mark.parametrize("world,bands", [(1, 1), (2, 2), (6, 2), (8, 8), (32, 8), (3, 1)])
def test_timestep_bands_partition_the_range_like_the_seed(world, bands):
    spans = [timestep_band(r, world) for r in range(world)]
    assert len(set(spans)) == bands
    assert sorted(set(spans))[0][0] == 0 and sorted(set(spans))[-1][1] == 1000
    assert sum(hi - lo for lo, hi in set(spans)) == 1000
    assert all(spans[r] <= spans[r + 1] for r in range(world - 1))  # consecutive ranks share a band
    if world == 32:
        assert spans[0] == (0, 125) and spans[3] == (0, 125) and spans[4] == (125, 250)


def test_sample_timesteps_stay_in_band_and_are_reproducible():
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    t = sample_timesteps(4000, rank=5, world_size=8, generator=g1)
    assert t.dtype == torch.long and t.min() == 625 and t.max() == 749
    assert t.equal(sample_timesteps(4000, rank=5, world_size=8, generator=g2))
    u = sample_timesteps(4000, rank=5, world_size=8, stratified=False, generator=g1)
    assert u.min() < 100 and u.max() > 900
    with pytest.raises(ValueError, match="rank=8"):
        timestep_band(8, 8)


def test_drop_text_zeroes_whole_samples_at_the_rate():
    context = torch.ones(4000, 3, 2)
    out = drop_text(context, 0.1, torch.Generator().manual_seed(0))
    per_sample = out.flatten(1)
    assert ((per_sample == 0).all(1) | (per_sample == 1).all(1)).all()  # all-or-nothing per sample
    dropped = (per_sample == 0).all(1).float().mean().item()
    assert 0.08 < dropped < 0.12
    assert drop_text(context, 0.0) is context
