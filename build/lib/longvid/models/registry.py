"""Named DiT sizes with the published CogVideoX hyper-parameters (seed-analysis §1.1).

Long-video variants are not sizes: compose them as overrides, e.g.
    make_config("5b", num_frames=145, attention="window", attn_prefix_frames=1, attn_window=12, mamba=True)
`tiny` is for CPU: 17-49 frame clips at 64x64 pixels through an 8x spatial / 4x temporal VAE give
8x8 latents, 16 tokens per latent frame; it trains in minutes on two cores.
"""

from __future__ import annotations

from typing import Any

from longvid.io import InputError
from longvid.models.config import DiTConfig

_2B = DiTConfig(
    num_frames=49, latent_height=60, latent_width=90, patch_size=2, in_channels=16, out_channels=16,
    hidden_size=1920, num_layers=30, num_heads=30, time_embed_dim=512, text_dim=4096, text_length=226,
    pos_embed="sincos", spatial_interpolation=1.875, time_interpolation=1.0,
    mamba_d_model=2048,  # Mamba2 kernels want d_model*expand/headdim % 8 == 0; 1920 gives 60 heads
)
_5B = _2B.replace(hidden_size=3072, num_layers=42, num_heads=48, pos_embed="rope", rope_theta=10000.0,
                  mamba_d_model=0)

SIZES: dict[str, DiTConfig] = {
    "tiny": DiTConfig(
        num_frames=17, latent_height=8, latent_width=8, patch_size=2, in_channels=16, out_channels=16,
        hidden_size=64, num_layers=2, num_heads=4, time_embed_dim=64, text_dim=32, text_length=16,
        pos_embed="rope", mamba_d_state=16, mamba_chunk_size=16,
    ),
    "2b": _2B,
    "5b": _5B,
    "5b-i2v": _5B.replace(in_channels=32, learnable_pos_embed=True),
}

# Not DiT knobs, but published with each size and needed by whoever pairs it with a VAE/schedule.
DIFFUSION_DEFAULTS: dict[str, dict[str, float]] = {
    "tiny": {"vae_scale_factor": 1.0, "snr_shift_scale": 1.0},
    "2b": {"vae_scale_factor": 1.15258426, "snr_shift_scale": 3.0},
    "5b": {"vae_scale_factor": 0.7, "snr_shift_scale": 1.0},
    "5b-i2v": {"vae_scale_factor": 0.7, "snr_shift_scale": 1.0},
}


def make_config(size: str, **overrides: Any) -> DiTConfig:
    """The named size with `overrides` applied, validated."""
    if size not in SIZES:
        raise InputError(f"model.size={size!r}: unknown (known: {', '.join(SIZES)})")
    return DiTConfig.from_dict(overrides, base=SIZES[size]).validate()
