"""DiTConfig validation and the size registry: geometry errors name the key and come before compute."""

from __future__ import annotations

import pytest
import torch

from longvid.io import InputError
from longvid.models.config import DiTConfig
from longvid.models.dit import DiT
from longvid.models.registry import DIFFUSION_DEFAULTS, SIZES, make_config


def test_published_sizes():
    two, five, i2v = SIZES["2b"], SIZES["5b"], SIZES["5b-i2v"]
    assert (two.hidden_size, two.num_layers, two.num_heads, two.head_dim) == (1920, 30, 30, 64)
    assert (five.hidden_size, five.num_layers, five.num_heads, five.head_dim) == (3072, 42, 48, 64)
    assert two.pos_embed == "sincos" and five.pos_embed == "rope" and i2v.pos_embed == "rope"
    assert (i2v.in_channels, i2v.out_channels, i2v.learnable_pos_embed) == (32, 16, True)
    for c in (two, five, i2v):
        assert (c.time_embed_dim, c.patch_size, c.text_dim, c.text_length) == (512, 2, 4096, 226)
        assert c.latent_frames == 13
        assert c.frame_tokens == 1350
    assert two.mamba_width == 2048 and five.mamba_width == 3072
    assert DIFFUSION_DEFAULTS["2b"] == {"vae_scale_factor": 1.15258426, "snr_shift_scale": 3.0}
    for name in SIZES:
        make_config(name)  # every named size validates


def test_long_video_geometry_of_the_seed():
    cfg = make_config("5b", num_frames=145, attention="window", attn_prefix_frames=1, attn_window=12,
                      mamba=True)
    assert cfg.latent_frames == 37 and cfg.frame_tokens * cfg.latent_frames == 49950
    assert cfg.base_frames == 13  # each window is the 49-frame pre-training length
    make_config("5b", num_frames=145, attention="window", attn_prefix_frames=5, attn_window=8)  # "attn4"


def test_tiny_is_tiny():
    model = DiT(make_config("tiny", mamba=False))
    assert sum(p.numel() for p in model.parameters()) < 500_000
    assert SIZES["tiny"].frame_tokens == 16


@pytest.mark.parametrize("overrides, key", [
    ({"num_frames": 48}, "model.num_frames"),
    ({"num_frames": 45}, "model.num_frames"),  # 4N+1 but not 8N+1
    ({"num_frames": 49, "attention": "window", "attn_window": 5}, "model.attn_window"),  # 13 - 1 = 12
    ({"num_frames": 49, "attention": "strided", "attn_prefix_frames": 2, "attn_window": 4},
     "model.attn_window"),
    ({"num_frames": 49, "sincos_repeat": "window", "pos_embed": "sincos", "attn_window": 7},
     "model.attn_window"),
    ({"num_frames": 17, "attention": "window", "attn_window": 8}, "model.attn_window"),  # 5 < 1 + 8 frames
    ({"num_frames": 49, "attention": "window", "attn_window": 4, "repeat_attn_steps": 3},
     "model.repeat_attn_steps"),
    ({"num_frames": 49, "repeat_attn_steps": 1}, "model.repeat_attn_steps"),  # needs windowed attention
    ({"latent_height": 9}, "model.latent_height"),
    ({"num_heads": 5}, "model.num_heads"),
    ({"hidden_size": 96, "num_heads": 12}, "rope"),  # head dim 8 cannot split into t/h/w pairs
    ({"attention": "sliding"}, "model.attention"),
    ({"mamba": True, "mamba_headdim": 48}, "model.mamba_headdim"),
    ({"pos_embed": "sincos", "sincos_repeat": "interleave", "num_frames": 49, "sincos_base_frames": 6},
     "model.sincos_base_frames"),
    ({"num_layers": "2"}, "model.num_layers"),
])
def test_bad_geometry_names_the_key(overrides, key):
    with pytest.raises(InputError, match=key.replace(".", r"\.")) as err:
        make_config("tiny", **overrides)
    assert "\n" not in str(err.value)


def test_unknown_key_is_an_error():
    with pytest.raises(InputError, match=r"model\.attn_lenght: unknown key"):
        DiTConfig.from_dict({"attn_lenght": 12})


def test_runtime_geometry_errors_come_before_any_compute():
    """A model built for 49 frames fed 41 frames' latents (11): windows of 4 after 1 prefix don't fit."""
    model = DiT(make_config("tiny", num_frames=49, attention="window", attn_prefix_frames=1, attn_window=4))
    calls = []
    handle = torch.nn.modules.module.register_module_forward_pre_hook(lambda mod, args: calls.append(mod))
    try:
        ctx = torch.randn(1, 16, 32)
        with pytest.raises(InputError, match=r"model\.attn_window=4.*11 - 1 = 10"):
            model(torch.randn(1, 11, 16, 8, 8), torch.tensor([5]), ctx)
        with pytest.raises(InputError, match=r"model\.in_channels"):
            model(torch.randn(1, 13, 15, 8, 8), torch.tensor([5]), ctx)
        with pytest.raises(InputError, match=r"model\.text_dim"):
            model(torch.randn(1, 13, 16, 8, 8), torch.tensor([5]), torch.randn(1, 16, 31))
        assert calls == [model, model, model]  # only the top-level call: no sub-module ran
    finally:
        handle.remove()


def test_learnable_pos_embed_needs_its_frame_count_under_full_attention():
    model = DiT(make_config("tiny", learnable_pos_embed=True, in_channels=32))  # 17 frames: 5 latents
    with pytest.raises(InputError, match=r"model\.learnable_pos_embed: covers 5 latent frames"):
        model(torch.randn(1, 13, 16, 8, 8), torch.tensor([5]), torch.randn(1, 16, 32),
              torch.randn(1, 13, 16, 8, 8))
