"""Long-video attention layouts and positional extensions against literal, loop-by-loop versions of
the seed's algorithms (seed-analysis §1.4-1.6)."""

from __future__ import annotations

import pytest
import torch

from longvid.models import embeddings as E
from longvid.models.attention import Attention, AttnPlan, make_plan
from longvid.models.dit import DiT
from longvid.models.registry import make_config

L, N_FRAME, D, HEADS = 3, 4, 32, 2  # text tokens, tokens per frame, width, heads


def random_attention(seed: int = 0) -> Attention:
    torch.manual_seed(seed)
    attn = Attention(D, HEADS)
    with torch.no_grad():
        for p in attn.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return attn


def rope(frames: int):
    return E.rope_tables(D // HEADS, frames, 2, 2, 10000.0, L)


def seed_windows(attn, h, T, P, A, k):
    """The seed's _attention_forward: one full attention call per window (output projection
    included), summed into a zero buffer, divided by counts; the last k windows copy the last
    computed window's un-normalised buffer."""
    n, W = N_FRAME, (T - P) // A
    out, count = torch.zeros_like(h), torch.zeros_like(h[..., :1])
    text, video = h[:, :L], h[:, L:]
    for i in range(W - k):
        s, e = i * A * n, (P + (i + 1) * A) * n
        y = attn(torch.cat([text, video[:, s:e]], 1), AttnPlan(L, P + A, n, rope=rope(P + A)))
        out[:, :L] += y[:, :L]
        count[:, :L] += 1
        out[:, L + s:L + e] += y[:, L:]
        count[:, L + s:L + e] += 1
        last = (s, e)
    for i in range(W - k, W):
        s, e = i * A * n, (P + (i + 1) * A) * n
        out[:, L + s:L + e] += out[:, L + last[0]:L + last[1]].clone()
        count[:, L + s:L + e] += 1
    return out / count


def seed_strided(attn, h, T, P, A):
    """The seed's strided attention: text + prefix frames + every step-th frame, outputs repeated."""
    n, step = N_FRAME, (T - P) // A
    head = L + P * n
    kept = h[:, head:].unflatten(1, (T - P, n))[:, ::step].flatten(1, 2)
    y = attn(torch.cat([h[:, :head], kept], 1), AttnPlan(L, P + A, n, rope=rope(P + A)))
    upsampled = y[:, head:].unflatten(1, (A, n)).repeat_interleave(step, 1).flatten(1, 2)
    return torch.cat([y[:, :head], upsampled], 1)


@pytest.mark.parametrize("T, P, A, k", [(13, 1, 4, 0), (13, 1, 4, 1), (13, 1, 4, 2), (9, 0, 3, 0),
                                        (13, 5, 4, 0)])
def test_windowed_attention_matches_the_seed_loop(T, P, A, k):
    attn = random_attention()
    h = torch.randn(2, L + T * N_FRAME, D)
    plan = make_plan("window", L, T, N_FRAME, P, A, k, rope(P + A), h.device)
    # with k > 0 this includes the seed's quirk: the last frame holds an un-normalised sum
    assert (attn(h, plan) - seed_windows(attn, h, T, P, A, k)).abs().max().item() < 1e-5


@pytest.mark.parametrize("T, P, A, k", [(13, 1, 4, 0), (13, 1, 4, 2), (13, 5, 4, 1), (9, 0, 3, 1)])
def test_windowed_attention_gradients_match_the_seed_loop(T, P, A, k):
    """Input and weight gradients through the windows' gather and scatter (their backwards are written
    out by hand): frames in one window or shared by two (prefix 1 or 5), or none shared (prefix 0), and
    skipped windows."""
    attn = random_attention()
    h = torch.randn(2, L + T * N_FRAME, D, requires_grad=True)
    plan = make_plan("window", L, T, N_FRAME, P, A, k, rope(P + A), h.device)
    weight = torch.randn(2, L + T * N_FRAME, D)
    got = torch.autograd.grad((attn(h, plan) * weight).sum(), [h, *attn.parameters()])
    want = torch.autograd.grad((seed_windows(attn, h, T, P, A, k) * weight).sum(), [h, *attn.parameters()])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("T, P, A", [(13, 1, 4), (13, 1, 6), (9, 3, 3)])
def test_strided_attention_matches_the_seed(T, P, A):
    attn = random_attention()
    h = torch.randn(2, L + T * N_FRAME, D)
    plan = make_plan("strided", L, T, N_FRAME, P, A, 0, rope(P + A), h.device)
    assert (attn(h, plan) - seed_strided(attn, h, T, P, A)).abs().max().item() < 1e-5


def test_one_window_is_full_attention():
    base = make_config("tiny", num_frames=49)
    full, windowed = DiT(base), DiT(base.replace(attention="window", attn_prefix_frames=1, attn_window=12))
    _randomise(full)
    windowed.load_state_dict(full.state_dict())
    x, t, ctx = torch.randn(1, 13, 16, 8, 8), torch.tensor([3]), torch.randn(1, 16, 32)
    with torch.no_grad():
        assert torch.equal(full(x, t, ctx), windowed(x, t, ctx))


def _randomise(model):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)


@pytest.mark.parametrize("attention", ["window", "strided"])
def test_long_video_dit_runs_and_differs_from_full(attention):
    cfg = make_config("tiny", num_frames=49, attention=attention, attn_prefix_frames=1, attn_window=4)
    model = DiT(cfg)
    _randomise(model)
    full = DiT(cfg.replace(attention="full"))
    full.load_state_dict(model.state_dict())
    x, t, ctx = torch.randn(1, 13, 16, 8, 8), torch.tensor([3]), torch.randn(1, 16, 32)
    out = model(x, t, ctx)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert (out - full(x, t, ctx)).abs().max() > 1e-3  # the layout really changes the computation


def test_window_repeated_sincos_averages_overlaps():
    base = torch.randn(5, 3, 8)  # prefix 1 + window 4 frames
    tiled = E.tile_over_windows(base, 13, prefix=1, window=4)
    for f in range(13):
        rows = [base[f - 4 * i] for i in range(3) if 4 * i <= f < 1 + 4 * (i + 1)]
        assert torch.allclose(tiled[f], torch.stack(rows).mean(0))
    assert torch.equal(tiled[4], (base[4] + base[0]) / 2) and torch.equal(tiled[5], base[1])


def test_interleave_repeated_sincos():
    base = torch.arange(5.0)[:, None]
    assert E.repeat_interleave_frames(base, 13).flatten().tolist() == [0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]


def test_sincos_table_modes():
    cfg = make_config("tiny", pos_embed="sincos", num_frames=49, sincos_repeat="window", attn_window=4)
    win = E.sincos_table(cfg, 13, 4, 4).view(13, 16, -1)
    base = E.sincos_3d(64, 5, 4, 4, 1.875)
    assert torch.allclose(win[5], base[1]) and torch.allclose(win[4], (base[4] + base[0]) / 2)
    squeezed_cfg = cfg.replace(sincos_repeat="none", time_interpolation=3.0)
    squeezed = E.sincos_table(squeezed_cfg, 13, 4, 4).view(13, 16, -1)
    assert torch.allclose(squeezed[3], base[1], atol=1e-6)  # frame 3 / 3 lands on position 1


def test_i2v_learnable_embedding_is_tiled_over_windows():
    cfg = make_config("tiny", num_frames=49, pos_embed="rope", learnable_pos_embed=True, in_channels=32,
                      attention="window", attn_prefix_frames=1, attn_window=4)
    model = DiT(cfg)
    assert model.patch_embed.pos_embedding.shape == (1, 16 + 5 * 16, 64)  # one window's worth, as the seed
    with torch.no_grad():
        model.patch_embed.pos_embedding.normal_()
    rows = E.learned_pos_rows(cfg, model.patch_embed.pos_embedding, 13)
    video = rows[0, 16:].view(13, 16, 64)
    base = model.patch_embed.pos_embedding[0, 16:].view(5, 16, 64)
    assert torch.allclose(video[8], (base[4] + base[0]) / 2) and torch.allclose(video[9], base[1])
    out = model(torch.randn(1, 13, 16, 8, 8), torch.tensor([3]), torch.randn(1, 16, 32),
                torch.randn(1, 13, 16, 8, 8))
    out.square().mean().backward()
    assert model.patch_embed.pos_embedding.grad.abs().sum() > 0


def test_gradient_checkpointing_is_transparent():
    cfg = make_config("tiny", num_frames=49, attention="window", attn_window=4)
    a, b = DiT(cfg), DiT(cfg.replace(gradient_checkpointing=True))
    _randomise(a)
    b.load_state_dict(a.state_dict())
    x, t, ctx = torch.randn(1, 13, 16, 8, 8), torch.tensor([3]), torch.randn(1, 16, 32)
    a(x, t, ctx).square().mean().backward()
    b(x, t, ctx).square().mean().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6), name


def test_tiny_learns_on_cpu():
    """A few optimiser steps on one batch: the v-prediction loss must fall (the model trains)."""
    torch.manual_seed(0)
    model = DiT(make_config("tiny"))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    x, ctx, t = torch.randn(2, 5, 16, 8, 8), torch.randn(2, 16, 32), torch.tensor([100, 600])
    target = torch.randn_like(x) * 0.5 + x.roll(1, dims=1) * 0.5
    losses = []
    for _ in range(40):
        loss = (model(x, t, ctx) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]
