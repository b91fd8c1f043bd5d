"""diffusers CogVideoXTransformer3DModel <-> longvid DiT: configs and state dicts.

Parameter names (i = block index). longvid <- diffusers: identical except

  transformer_blocks.i.attn1.to_qkv (rows q | k | v)   <- attn1.to_q, attn1.to_k, attn1.to_v (concatenated)
  transformer_blocks.i.attn1.to_out                    <- attn1.to_out.0
  transformer_blocks.i.ff.fc_in, ff.fc_out             <- ff.net.0.proj, ff.net.2
  transformer_blocks.i.{mamba_scan1,mamba_scan2,scan1_gating,scan2_gating}.*   (no diffusers equivalent)

longvid <- SAT (keys prefixed `model.diffusion_model.`; L.i = transformer.layers.i, A = mixins.adaln_layer,
M = mixins.mamba_attn), for the SAT importer:

  patch_embed.proj, .text_proj              <- mixins.patch_embed.proj, .text_proj
  patch_embed.pos_embedding (I2V)           <- mixins.pos_embed.pos_embedding
  time_embedding.linear_1, .linear_2        <- time_embed.0, time_embed.2
  transformer_blocks.i.norm1.norm, .norm2.norm <- L.i.input_layernorm, L.i.post_attention_layernorm
  transformer_blocks.i.norm1.linear         <- A.adaLN_modulations.i.1, rows of chunks 0-2 and 6-8 (of 12)
  transformer_blocks.i.norm2.linear         <- A.adaLN_modulations.i.1, rows of chunks 3-5 and 9-11
  transformer_blocks.i.attn1.to_qkv         <- L.i.attention.query_key_value (same q|k|v row order)
  transformer_blocks.i.attn1.norm_q, norm_k <- A.query_layernorm_list.i, A.key_layernorm_list.i
  transformer_blocks.i.attn1.to_out         <- L.i.attention.dense
  transformer_blocks.i.ff.fc_in, .fc_out    <- L.i.mlp.dense_h_to_4h, L.i.mlp.dense_4h_to_h
  transformer_blocks.i.mamba_scan{1,2}.*    <- M.mamba_scan{1,2}_list.i.* (block.norm, block.mixer.*,
                                               in_projection, out_projection)
  transformer_blocks.i.scan{1,2}_gating.*   <- M.scan{1,2}_gating_list.i.gating_alpha
  norm_final                                <- transformer.final_layernorm
  norm_out.norm, norm_out.linear            <- mixins.final_layer.norm_final, .adaLN_modulation.1
  proj_out                                  <- mixins.final_layer.linear

SAT's single 12-chunk adaLN row order is [video shift, scale, gate (attn); video shift, scale, gate
(mlp); text the same six]; diffusers' norm1.linear is [video shift, scale, gate; text shift, scale, gate].
"""

from __future__ import annotations

import re
from typing import Any

import torch

from longvid.io import InputError
from longvid.models.config import DiTConfig

_RENAMES = [  # (diffusers, longvid) key fragments
    (".attn1.to_out.0.", ".attn1.to_out."),
    (".ff.net.0.proj.", ".ff.fc_in."),
    (".ff.net.2.", ".ff.fc_out."),
]
_QKV = re.compile(r"^(transformer_blocks\.\d+\.attn1)\.to_([qkv])\.(weight|bias)$")


def diffusers_to_longvid(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        m = _QKV.match(key)
        if m:
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
            continue
        for theirs, ours in _RENAMES:
            key = key.replace(theirs, ours)
        out[key] = value
    for (prefix, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise InputError(f"diffusers state dict: {prefix}.to_{{q,k,v}}.{kind} incomplete "
                             f"({sorted(parts)})")
        out[f"{prefix}.to_qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def longvid_to_diffusers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of diffusers_to_longvid. Mamba keys have no diffusers counterpart and are refused."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if ".mamba_scan" in key or "_gating." in key:
            raise InputError(f"{key}: Mamba weights have no diffusers CogVideoX equivalent")
        m = re.match(r"^(transformer_blocks\.\d+\.attn1)\.to_qkv\.(weight|bias)$", key)
        if m:
            for name, part in zip("qkv", value.chunk(3, dim=0)):
                out[f"{m.group(1)}.to_{name}.{m.group(2)}"] = part.clone()
            continue
        for theirs, ours in _RENAMES:
            key = key.replace(ours, theirs)
        out[key] = value
    return out


def config_from_diffusers(dc: dict[str, Any], **overrides: Any) -> DiTConfig:
    """A DiTConfig for a diffusers CogVideoX 1.0 transformer config (its `config.json` or `.config`)."""
    g = dict(dc).get
    unsupported = {"patch_size_t": None, "ofs_embed_dim": None, "flip_sin_to_cos": True, "freq_shift": 0,
                   "activation_fn": "gelu-approximate", "timestep_activation_fn": "silu",
                   "attention_bias": True, "patch_bias": True, "norm_elementwise_affine": True}
    for key, want in unsupported.items():
        if g(key, want) != want:
            raise InputError(f"diffusers config {key}={g(key)!r}: only {want!r} is supported (CogVideoX 1.0)")
    heads, head_dim = g("num_attention_heads", 30), g("attention_head_dim", 64)
    frames = g("sample_frames", 49)
    if not isinstance(frames, int) or frames < 1 or (frames - 1) % (2 * g("temporal_compression_ratio", 4)):
        latent = (frames - 1) // g("temporal_compression_ratio", 4) + 1 if isinstance(frames, int) else "?"
        raise InputError(f"diffusers config sample_frames={frames!r}: {latent} latent frames; this DiT needs an "
                         "odd latent frame count (8N+1 pixel frames: 49, 145) for model.num_frames")
    base = DiTConfig(
        num_frames=g("sample_frames", 49), time_compressed_rate=g("temporal_compression_ratio", 4),
        latent_height=g("sample_height", 60), latent_width=g("sample_width", 90),
        patch_size=g("patch_size", 2),
        in_channels=g("in_channels", 16), out_channels=g("out_channels", 16) or g("in_channels", 16),
        hidden_size=heads * head_dim, num_layers=g("num_layers", 30), num_heads=heads,
        time_embed_dim=g("time_embed_dim", 512), text_dim=g("text_embed_dim", 4096),
        text_length=g("max_text_seq_length", 226), norm_eps=float(g("norm_eps", 1e-5)),
        pos_embed="rope" if g("use_rotary_positional_embeddings", False) else "sincos",
        spatial_interpolation=float(g("spatial_interpolation_scale", 1.875)),
        time_interpolation=float(g("temporal_interpolation_scale", 1.0)),
        learnable_pos_embed=bool(g("use_learned_positional_embeddings", False)),
    )
    return DiTConfig.from_dict(overrides, base=base).validate()


def diffusers_config(cfg: DiTConfig) -> dict[str, Any]:
    """Constructor kwargs for diffusers' CogVideoXTransformer3DModel matching a full-attention cfg."""
    if (cfg.mamba or cfg.attention != "full" or cfg.sincos_repeat != "none" or not cfg.qk_norm
            or cfg.mlp_ratio != 4):
        raise InputError("diffusers CogVideoX has no Mamba, windowed/strided attention, repeated sin-cos, "
                         "disabled QK-norm or non-4x MLP; convert the base model only")
    return {
        "num_attention_heads": cfg.num_heads, "attention_head_dim": cfg.head_dim,
        "in_channels": cfg.in_channels, "out_channels": cfg.out_channels,
        "time_embed_dim": cfg.time_embed_dim, "text_embed_dim": cfg.text_dim,
        "num_layers": cfg.num_layers, "sample_width": cfg.latent_width, "sample_height": cfg.latent_height,
        "sample_frames": cfg.num_frames, "patch_size": cfg.patch_size,
        "temporal_compression_ratio": cfg.time_compressed_rate, "max_text_seq_length": cfg.text_length,
        "norm_eps": cfg.norm_eps, "spatial_interpolation_scale": cfg.spatial_interpolation,
        "temporal_interpolation_scale": cfg.time_interpolation,
        "use_rotary_positional_embeddings": cfg.pos_embed == "rope",
        "use_learned_positional_embeddings": cfg.learnable_pos_embed,
    }
