"""longvid's DiT against diffusers' CogVideoXTransformer3DModel: same random weights, same outputs."""

from __future__ import annotations

import pytest
import torch
from diffusers import CogVideoXTransformer3DModel
from diffusers.models.embeddings import get_3d_rotary_pos_embed, get_3d_sincos_pos_embed

from longvid.io import InputError
from longvid.models import embeddings as E
from longvid.models.convert_diffusers import (
    config_from_diffusers,
    diffusers_config,
    diffusers_to_longvid,
    longvid_to_diffusers,
)
from longvid.models.dit import DiT
from longvid.models.registry import make_config


def random_diffusers(cfg, seed: int = 0) -> CogVideoXTransformer3DModel:
    """diffusers model with every weight random (adaLN, norms and the I2V pos-emb included)."""
    torch.manual_seed(seed)
    ref = CogVideoXTransformer3DModel(**diffusers_config(cfg)).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        if cfg.learnable_pos_embed:
            ref.patch_embed.pos_embedding.add_(torch.randn_like(ref.patch_embed.pos_embedding) * 0.1)
    return ref


def inputs(cfg, batch: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    T, H, W = cfg.latent_frames, cfg.latent_height, cfg.latent_width
    x = torch.randn(batch, T, cfg.out_channels, H, W, generator=g)
    ctx = torch.randn(batch, cfg.text_length, cfg.text_dim, generator=g)
    t = torch.tensor([7, 901][:batch])
    extra = cfg.in_channels - cfg.out_channels  # I2V: image latent channels
    img = torch.randn(batch, T, extra, H, W, generator=g) if extra else None
    return x, t, ctx, img


def reference_forward(ref, cfg, x, t, ctx, img):
    rot = None
    if cfg.pos_embed == "rope":  # what diffusers' pipeline computes for a grid at its base size
        gh, gw = cfg.latent_height // cfg.patch_size, cfg.latent_width // cfg.patch_size
        rot = get_3d_rotary_pos_embed(cfg.head_dim, ((0, 0), (gh, gw)), (gh, gw), x.shape[1],
                                      theta=cfg.rope_theta)
    xin = x if img is None else torch.cat([x, img], dim=2)
    return ref(xin, ctx, t, image_rotary_emb=rot, return_dict=False)[0]


CASES = {
    "sincos-2b-like": {"pos_embed": "sincos"},
    "rope-5b-like": {"pos_embed": "rope"},
    "rope-i2v-like": {"pos_embed": "rope", "learnable_pos_embed": True, "in_channels": 32},
}


@pytest.mark.parametrize("case", CASES)
def test_forward_matches_diffusers(case):
    cfg = make_config("tiny", num_layers=2, norm_eps=1e-6, **CASES[case])
    ref = random_diffusers(cfg)
    model = DiT(cfg).eval()
    model.load_state_dict(diffusers_to_longvid(ref.state_dict()), strict=True)
    x, t, ctx, img = inputs(cfg)
    with torch.no_grad():
        want = reference_forward(ref, cfg, x, t, ctx, img)
        got = model(x, t, ctx, image_latent=img)
    assert want.shape == got.shape == x.shape
    assert want.abs().max() > 0.5  # a real signal, not a zeroed-out network
    assert (want - got).abs().max().item() <= 1e-5


def test_gradients_match_diffusers():
    cfg = make_config("tiny", pos_embed="rope", norm_eps=1e-6)
    ref = random_diffusers(cfg).train()
    model = DiT(cfg).train()
    model.load_state_dict(diffusers_to_longvid(ref.state_dict()), strict=True)
    x, t, ctx, img = inputs(cfg)
    target = torch.randn_like(x)
    ((reference_forward(ref, cfg, x, t, ctx, img) - target) ** 2).mean().backward()
    ((model(x, t, ctx) - target) ** 2).mean().backward()
    ref_grads = diffusers_to_longvid({n: p.grad for n, p in ref.named_parameters()})
    for name, p in model.named_parameters():
        scale = ref_grads[name].abs().max().clamp_min(1e-3)
        assert ((p.grad - ref_grads[name]).abs().max() / scale).item() < 1e-4, name


def test_state_dict_round_trip_and_config():
    cfg = make_config("tiny", pos_embed="rope", learnable_pos_embed=True, in_channels=32)
    ref = random_diffusers(cfg)
    sd = ref.state_dict()
    back = longvid_to_diffusers(diffusers_to_longvid(sd))
    assert back.keys() == sd.keys()
    for k in sd:
        assert torch.equal(back[k], sd[k]), k
    # not in diffusers' config
    mamba_knobs = {"mamba_d_state": cfg.mamba_d_state, "mamba_chunk_size": cfg.mamba_chunk_size}
    assert config_from_diffusers(dict(ref.config), norm_eps=cfg.norm_eps, **mamba_knobs) == cfg


def test_conversion_refuses_what_diffusers_cannot_hold():
    with pytest.raises(InputError, match="Mamba"):
        longvid_to_diffusers({"transformer_blocks.0.mamba_scan1.block.norm.weight": torch.zeros(1)})
    with pytest.raises(InputError, match="patch_size_t"):
        config_from_diffusers({"patch_size_t": 2})
    with pytest.raises(InputError, match="attn1.to_"):
        diffusers_to_longvid({"transformer_blocks.0.attn1.to_q.weight": torch.zeros(1)})


def test_position_tables_match_diffusers_with_long_video_knobs():
    # time interpolation 37/13 (seed 2B 145-frame runs) and a non-default RoPE theta (seed "theta_50k")
    ours = E.sincos_3d(64, 37, 4, 6, spatial_interp=1.875, time_interp=37 / 13)
    theirs = get_3d_sincos_pos_embed(64, (6, 4), 37, 1.875, 37 / 13)
    assert (ours - theirs.float()).abs().max() < 1e-6
    rot = E.rope_tables(32, 9, 4, 6, 50000.0, text_len=3)[:, 0]  # complex, one per channel pair
    ref_cos, ref_sin = get_3d_rotary_pos_embed(32, ((0, 0), (4, 6)), (4, 6), 9, theta=50000.0)
    assert torch.equal(rot[:3], torch.ones(3, 16, dtype=torch.complex64))  # text tokens are not rotated
    assert (rot[3:].real - ref_cos[:, 0::2]).abs().max() < 1e-6
    assert (rot[3:].imag - ref_sin[:, 1::2]).abs().max() < 1e-6
