"""VAEs (space-to-depth, CogVideoX through diffusers) and text encoders (T5 from a path, tiny)."""

from __future__ import annotations

import logging

import pytest
import torch
from diffusers import AutoencoderKLCogVideoX
from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

from longvid.io import InputError
from longvid.models.text import T5TextEncoder, TinyTextEncoder
from longvid.models.vae import CogVideoXVAE, PoolVAE, SpaceToDepthVAE


def video(frames: int, h: int = 32, w: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.rand(2, 3, frames, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---- space-to-depth ---------------------------------------------------------------------------------

@pytest.mark.parametrize("frames", [1, 9, 17, 49])
def test_space_to_depth_is_lossless_with_causal_frame_count(frames):
    vae = SpaceToDepthVAE()
    x = video(frames)
    z = vae.encode(x)
    assert z.shape == (2, 768, (frames - 1) // 4 + 1, 4, 6) == vae.latent_shape(tuple(x.shape))
    assert torch.equal(vae.decode(z), x)


def test_space_to_depth_keeps_frames_and_pixels_local():
    """Latent frame k > 0 is exactly pixel frames 4k-3..4k of the 8x8 block; frame 0 only the first frame."""
    vae = SpaceToDepthVAE()
    x = video(9)
    z = vae.encode(x)
    x2 = x.clone()
    x2[:, :, 5, 8:16, 16:24] += 1  # pixel frame 5 -> latent frame 2, block (1, 2)
    changed = (vae.encode(x2) != z).any(dim=1)  # (B, F', h, w)
    assert changed[:, 2, 1, 2].all() and changed.sum() == 2
    latent0 = z[:, :, 0].reshape(2, 3, 4, 8, 8, 4, 6)  # channel = (c, dt, dy, dx)
    assert (latent0 == latent0[:, :, :1]).all()  # the first frame, repeated over dt


def test_space_to_depth_scale_factor_and_decode_averages_first_frame_copies():
    vae = SpaceToDepthVAE(scale_factor=0.5)
    x = video(5)
    z = vae.encode(x)
    torch.testing.assert_close(z, SpaceToDepthVAE().encode(x) * 0.5)
    torch.testing.assert_close(vae.decode(z), x)
    # Generated latents need not repeat the first frame 4 times: decoding takes the mean of the copies.
    z = torch.randn_like(z)
    copies = SpaceToDepthVAE(scale_factor=0.5).decode(z.clone())
    first = (z[:, :, 0] / 0.5).reshape(2, 3, 4, 8, 8, 4, 6).mean(2)  # (c, dt, dy, dx, h, w): mean over dt
    first = first.permute(0, 1, 4, 2, 5, 3).reshape(2, 3, 32, 48)
    torch.testing.assert_close(copies[:, :, 0], first)


@pytest.mark.parametrize("frames,h,w,msg", [(8, 32, 32, r"frames=8: must be 4N\+1"), (9, 30, 32, "30x32")])
def test_space_to_depth_rejects_bad_geometry(frames, h, w, msg):
    with pytest.raises(InputError, match=msg):
        SpaceToDepthVAE().encode(torch.zeros(1, 3, frames, h, w))


# ---- mean pool ---------------------------------------------------------------------------------------

def test_pool_means_blocks_causally():
    vae = PoolVAE()
    x = video(9)
    z = vae.encode(x)
    assert z.shape == (2, 3, 3, 4, 6) == vae.latent_shape(tuple(x.shape))
    torch.testing.assert_close(z[:, :, 0, 1, 2], x[:, :, 0, 8:16, 16:24].mean(dim=(2, 3)))
    torch.testing.assert_close(z[:, :, 2, 1, 2], x[:, :, 5:9, 8:16, 16:24].mean(dim=(2, 3, 4)))


def test_pool_round_trips_what_it_can_represent():
    vae = PoolVAE()
    flat = torch.full((1, 3, 17, 32, 32), 0.3)
    torch.testing.assert_close(vae.decode(vae.encode(flat)), flat)
    # brightness rising linearly over time: linear interpolation in time gets it back, bar the ends
    ramp = torch.linspace(-0.8, 0.8, 17).view(1, 1, 17, 1, 1).expand(1, 3, 17, 16, 16)
    back = vae.decode(vae.encode(ramp))
    assert back.shape == ramp.shape
    torch.testing.assert_close(back[:, :, 3:14], ramp[:, :, 3:14], atol=1e-5, rtol=0)
    with pytest.raises(InputError, match="PoolVAE makes 3"):
        vae.decode(torch.zeros(1, 4, 2, 2, 2))


# ---- CogVideoX VAE ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    """A tiny random AutoencoderKLCogVideoX saved the way a CogVideoX pipeline stores it (vae/)."""
    torch.manual_seed(0)
    vae = AutoencoderKLCogVideoX(block_out_channels=(16, 16, 32, 32), layers_per_block=1, latent_channels=4,
                                 norm_num_groups=8, sample_height=64, sample_width=64, scaling_factor=0.7)
    root = tmp_path_factory.mktemp("cogvideox")
    vae.save_pretrained(root / "vae")
    return root


def test_cogvideox_vae_encode_decode_matches_diffusers_with_scale(vae_dir):
    ours = CogVideoXVAE.from_pretrained(vae_dir, sample_posterior=False, encoder_window=8, decoder_window=2)
    ref = AutoencoderKLCogVideoX.from_pretrained(vae_dir / "vae")  # diffusers defaults: 8 / 2
    x = video(17, 16, 24)
    z = ours.encode(x)
    assert z.shape == (2, 4, 5, 2, 3) == ours.latent_shape(tuple(x.shape))
    assert ours.scale_factor == 0.7  # read from the VAE's config when not given
    with torch.no_grad():
        torch.testing.assert_close(z, ref.encode(x).latent_dist.mode() * 0.7, rtol=0, atol=0)
        torch.testing.assert_close(ours.decode(z), ref.decode(z / 0.7).sample, rtol=0, atol=0)
    assert not any(p.requires_grad for p in ours.parameters())


def test_cogvideox_vae_temporal_tiling_windows_are_applied(vae_dir):
    x = video(17, 16, 24, seed=1)
    whole = CogVideoXVAE.from_pretrained(vae_dir, sample_posterior=False, encoder_window=16, decoder_window=8)
    tiled = CogVideoXVAE.from_pretrained(vae_dir, sample_posterior=False, encoder_window=8, decoder_window=2)
    z_whole, z_tiled = whole.encode(x), tiled.encode(x)
    assert z_whole.shape == z_tiled.shape
    # Same causal conv cache, but GroupNorm statistics per chunk: close, not equal (as in the seed).
    diff = (z_whole - z_tiled).abs().max().item()
    assert 0 < diff < 0.5 * z_whole.abs().max().item()
    assert whole.decode(z_whole).shape == tiled.decode(z_whole).shape == x.shape
    assert not torch.equal(whole.decode(z_whole), tiled.decode(z_whole))


def test_cogvideox_vae_samples_posterior_reproducibly(vae_dir):
    vae = CogVideoXVAE.from_pretrained(vae_dir / "vae")  # the vae/ directory itself also loads
    x = video(9, 16, 24)
    a = vae.encode(x, generator=torch.Generator().manual_seed(3))
    b = vae.encode(x, generator=torch.Generator().manual_seed(3))
    c = vae.encode(x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_cogvideox_vae_bad_inputs(vae_dir, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        CogVideoXVAE.from_pretrained(tmp_path / "missing")
    with pytest.raises(InputError, match="no config.json"):
        CogVideoXVAE.from_pretrained(tmp_path)
    with pytest.raises(InputError, match="vae.encoder_window=6"):
        CogVideoXVAE.from_pretrained(vae_dir, encoder_window=6)
    with pytest.raises(InputError, match=r"frames=10: must be 4N\+1"):
        CogVideoXVAE.from_pretrained(vae_dir).encode(torch.zeros(1, 3, 10, 32, 32))


# ---- text encoders ----------------------------------------------------------------------------------

PROMPTS = ["a red ball rolls", "a very long prompt about a cat that keeps going well past the limit"]


def test_tiny_text_encoder_is_deterministic_per_seed_and_leaves_global_rng():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, b, c = TinyTextEncoder(seed=0), TinyTextEncoder(seed=0), TinyTextEncoder(seed=1)
    assert torch.equal(torch.rand(1), before)  # building encoders did not consume the caller's RNG
    ea, eb, ec = a(PROMPTS), b(PROMPTS), c(PROMPTS)
    assert ea.shape == (2, 16, 32) and ea.dtype == torch.float32
    assert torch.equal(ea, eb) and not torch.allclose(ea, ec)
    assert not torch.allclose(ea[0], ea[1])  # different prompts, different embeddings
    assert a.encoder_id != c.encoder_id


def test_truncation_is_counted_and_logged(caplog):
    enc = TinyTextEncoder(max_length=20)
    with caplog.at_level(logging.WARNING, logger="longvid.models.text"):
        enc(PROMPTS)
    # ByT5: one token per byte plus </s>; the short prompt (16 + 1) fits, the long one loses len + 1 - 20.
    assert enc.truncated_tokens(PROMPTS) == [0, len(PROMPTS[1]) + 1 - 20]
    assert (enc.prompts_seen, enc.prompts_truncated, enc.tokens_truncated) == (2, 1, len(PROMPTS[1]) - 19)
    assert "1 of 2 prompts truncated to 20 tokens" in caplog.text
    # The truncated prompt's embedding only depends on its first tokens.
    assert torch.equal(enc([PROMPTS[1]]), enc([PROMPTS[1] + " and more and more"]))


def test_word_tokens_put_each_word_at_one_position():
    enc = TinyTextEncoder(max_length=12, tokenizer="words")
    ids = enc.tokenizer(["a red circle moves left", "A yellow circle moves right."])["input_ids"]
    assert len(ids[0]) == 6 and len(ids[1]) == 7  # five words (+ the full stop) and </s>
    assert ids[0][2:4] == ids[1][2:4] and ids[0][4] != ids[1][4]  # "circle moves" in place; left != right
    assert ids[1][0] == ids[0][0]  # lower-cased
    e = enc(["a red circle moves left", "a red circle moves right"])
    assert e.shape == (2, 12, 32) and not torch.allclose(e[0], e[1])
    assert enc.encoder_id != TinyTextEncoder(max_length=12).encoder_id  # other latent-cache keys than bytes
    assert enc.truncated_tokens(["one two three four five six seven eight nine ten eleven twelve"]) == [1]
    with pytest.raises(InputError, match="text.tokenizer='chars'"):
        TinyTextEncoder(tokenizer="chars")


def test_t5_text_encoder_loads_local_directory(tmp_path):
    cfg = T5Config(vocab_size=384, d_model=24, d_kv=8, d_ff=48, num_layers=1, num_heads=3,
                   feed_forward_proj="gated-gelu", is_encoder_decoder=False)
    torch.manual_seed(0)
    model = T5EncoderModel(cfg).eval()
    tok = ByT5Tokenizer()
    model.save_pretrained(tmp_path / "flat")  # SAT layout: one folder
    tok.save_pretrained(tmp_path / "flat")
    model.save_pretrained(tmp_path / "pipe" / "text_encoder")  # diffusers layout
    tok.save_pretrained(tmp_path / "pipe" / "tokenizer")
    ids = tok(PROMPTS, padding="max_length", max_length=32, truncation=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want = model(input_ids=ids).last_hidden_state
    for root in ("flat", "pipe"):
        enc = T5TextEncoder(tmp_path / root, max_length=32)
        got = enc(PROMPTS)
        assert got.shape == (2, 32, 24) and enc.dim == 24
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    with pytest.raises(InputError, match="does not exist"):
        T5TextEncoder(tmp_path / "nope")
    with pytest.raises(InputError, match="no config.json"):
        T5TextEncoder(tmp_path)
