"""What a held-out diffusers parity check found the conversion let through: each is now refused with
a message that names the key and the values."""

import json

import pytest
from diffusers import CogVideoXTransformer3DModel

from longvid.io import InputError
from longvid.models.checkpoint_io import export_diffusers, import_weights
from longvid.models.convert_diffusers import config_from_diffusers
from longvid.models.dit import DiT
from longvid.models.registry import make_config


def tiny(**kw):
    return make_config("tiny", pos_embed="rope", norm_eps=1e-6, **kw)


def test_export_refuses_a_rope_theta_diffusers_cannot_hold(tmp_path):
    with pytest.raises(InputError, match=r"model\.rope_theta=5000 \(RoPE theta is always 10000"):
        export_diffusers(DiT(tiny(rope_theta=5000.0)), tmp_path / "t")
    assert not (tmp_path / "t").exists()
    export_diffusers(DiT(tiny()), tmp_path / "ok")  # the default theta exports


@pytest.mark.parametrize("key,value,ours", [("spatial_interpolation_scale", 3.0, "spatial_interpolation"),
                                            ("temporal_interpolation_scale", 2.0, "time_interpolation"),
                                            ("norm_eps", 1e-5, "norm_eps")])
def test_import_names_each_config_mismatch_with_both_values(tmp_path, key, value, ours):
    cfg = tiny()
    out = export_diffusers(DiT(cfg), tmp_path / "transformer")
    meta = json.loads((out / "config.json").read_text())
    mine = meta[key]
    meta[key] = value
    (out / "config.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=rf"{key}={value!r} but the experiment's model\.{ours}={mine!r}"):
        import_weights(DiT(cfg), "diffusers", tmp_path)


def test_learned_positions_need_rope_and_diffusers_agrees():
    with pytest.raises(InputError, match=r"model\.learnable_pos_embed: needs model\.pos_embed=rope .* 'sincos'"):
        make_config("tiny", pos_embed="sincos", learnable_pos_embed=True)
    with pytest.raises(ValueError):  # the combination diffusers itself refuses to build
        CogVideoXTransformer3DModel(num_attention_heads=2, attention_head_dim=16, num_layers=1, sample_width=8,
                                    sample_height=8, sample_frames=9, text_embed_dim=32, time_embed_dim=16,
                                    use_rotary_positional_embeddings=False, use_learned_positional_embeddings=True)


def test_an_even_latent_frame_count_names_sample_frames():
    with pytest.raises(InputError, match=r"diffusers config sample_frames=45: 12 latent frames.*model\.num_frames"):
        config_from_diffusers({"sample_frames": 45})
    assert config_from_diffusers({"sample_frames": 49}).latent_frames == 13
