"""Every knob of the DiT and its long-video variants, validated before anything is built.

Names follow the seed (seed-analysis §1, §10) where it had one; the seed's own spelling is noted.
Frames: `num_frames` counts pixel frames (8N+1: 17, 49, 145); the DiT sees
`latent_frames = (num_frames - 1) // time_compressed_rate + 1` (5, 13, 37).

Long-video attention (seed-analysis §1.4, §1.5), with P = attn_prefix_frames and A = attn_window:
  * window:  window i covers latent frames [i*A, P + (i+1)*A), i < (T - P) / A. Every window sees all
             text tokens; outputs are averaged where windows overlap, text over all computed windows.
  * strided: text + the first P frames always; of the other T - P frames every ((T - P) / A)-th one;
             outputs up-sampled by nearest-neighbour repetition along time.
Both need A to divide T - P. The seed did not check this and silently produced NaN (0/0 overlap
counts), so it is checked here, naming the key.

This module imports no torch: the CLI validates configs with it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

from longvid.io import InputError

PREFIX = "model"

# CogVideoX's causal VAE groups 4 pixel frames per latent frame, as every VAE of models/vae.py does by
# default. Only callers that build no VAE assume it (config validation, the data viz, validation clips);
# whatever builds one asks it (runtime.Geometry).
COGVIDEOX_TEMPORAL = 4


def check_num_frames(frames: int, key: str, temporal: int = COGVIDEOX_TEMPORAL) -> int:
    """The clip-length rule of the DiT's data: 2rN+1 pixel frames for the VAE's r-fold temporal
    compression, i.e. an odd number of latent frames (CogVideoX's 8N+1 for its 4x VAE). The only
    place it is written: data, bucket and filter frame counts and DiTConfig.num_frames all come here."""
    m = 2 * temporal
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1 or (frames - 1) % m:
        raise InputError(f"{key}: {frames!r} is not {m}N+1 ({m + 1}, {2 * m + 1}, ..., {6 * m + 1}, ..., "
                         f"{18 * m + 1}) for {temporal}x temporal compression")
    return frames


@dataclass(frozen=True)
class DiTConfig:
    # geometry (seed network_config: num_frames, time_compressed_rate, latent_height/width, patch_size)
    num_frames: int = 49
    time_compressed_rate: int = COGVIDEOX_TEMPORAL  # must equal the VAE's (runtime.Geometry.of checks)
    latent_height: int = 60
    latent_width: int = 90
    patch_size: int = 2
    in_channels: int = 16  # 32 for I2V: noisy latent concatenated with the image latent
    out_channels: int = 16
    # width and depth
    hidden_size: int = 1920
    num_layers: int = 30
    num_heads: int = 30
    time_embed_dim: int = 512
    text_dim: int = 4096  # seed: patch_embed_config.text_hidden_size
    text_length: int = 226  # T5 max_length; fixes the learnable pos-emb's text rows
    mlp_ratio: int = 4
    norm_eps: float = 1e-6  # SAT uses 1e-6 everywhere; diffusers' released configs say 1e-5
    qk_norm: bool = True
    # positions
    pos_embed: str = "sincos"  # "sincos" (2B, added to video tokens) | "rope" (5B, on q/k of video tokens)
    spatial_interpolation: float = 1.875  # sin-cos grid divisor (seed height/width_interpolation)
    time_interpolation: float = 1.0  # sin-cos temporal divisor; 37/13 squeezes 145 frames into 49's range
    sincos_repeat: str = "none"  # "none" | "window" (P+A-frame table laid over each window) | "interleave"
    sincos_base_frames: int = 13  # "interleave": first frame + each later frame of this table repeated
    rope_theta: float = 10000.0
    learnable_pos_embed: bool = False  # 5B-I2V; covers P+A frames when windowed (tiled), else all frames
    # long-video attention (seed mamba_attn_config: prefix_temporal_length, attn_length, repeat_attn_steps)
    attention: str = "full"  # "full" | "window" | "strided"
    attn_prefix_frames: int = 1
    attn_window: int = 12
    repeat_attn_steps: int = 0  # window only: the last k windows reuse the last computed window's output
    # bidirectional Mamba2 inside the attention branch (seed mamba_order, parallel_scan, mamba_gating_*)
    mamba: bool = False
    mamba_order: str = "post"  # "post": mamba(attn(h)); "pre": attn(mamba(h))
    mamba_parallel_scan: bool = False
    mamba_gate_fn: str = "tanh"  # "tanh" | "none" (identity)
    mamba_gate_init: float = 0.0  # 0 => the Mamba path is an exact identity at init
    mamba_d_model: int = 0  # 0 => hidden_size; otherwise Linear width adapters (2B: 1920 -> 2048)
    mamba_d_state: int = 128
    mamba_d_conv: int = 4
    mamba_expand: int = 2
    mamba_headdim: int = 0  # 0 => the attention head dim (the seed's choice)
    mamba_ngroups: int = 1
    mamba_chunk_size: int = 256
    mamba_norm_eps: float = 1e-5  # mamba_ssm Block's pre-LayerNorm
    # memory
    gradient_checkpointing: bool = False

    # ---- derived ----------------------------------------------------------------------------------
    @property
    def latent_frames(self) -> int:
        return (self.num_frames - 1) // self.time_compressed_rate + 1

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def frame_tokens(self) -> int:
        return (self.latent_height // self.patch_size) * (self.latent_width // self.patch_size)

    @property
    def base_frames(self) -> int:
        """Frames one attention call sees: the pre-training length the positions were learnt for."""
        return self.latent_frames if self.attention == "full" else self.attn_prefix_frames + self.attn_window

    @property
    def mamba_width(self) -> int:
        return self.mamba_d_model or self.hidden_size

    @property
    def mamba_head_dim(self) -> int:
        return self.mamba_headdim or self.head_dim

    def replace(self, **changes: Any) -> DiTConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, d: dict[str, Any], base: DiTConfig | None = None) -> DiTConfig:
        """Overrides on top of `base` (defaults if None); unknown keys are an error, not ignored."""
        known = {f.name for f in fields(cls)}
        for k in d:
            if k not in known:
                raise InputError(f"{PREFIX}.{k}: unknown key (known: {', '.join(sorted(known))})")
        return dataclasses.replace(base or cls(), **d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # ---- validation -------------------------------------------------------------------------------
    def validate(self) -> DiTConfig:
        _check_types(self)
        _positive(self, "num_frames", "time_compressed_rate", "latent_height", "latent_width", "patch_size",
                  "in_channels", "out_channels", "hidden_size", "num_layers", "num_heads", "time_embed_dim",
                  "text_dim", "text_length", "mlp_ratio", "attn_window", "mamba_d_state", "mamba_d_conv",
                  "mamba_expand", "mamba_ngroups", "mamba_chunk_size", "sincos_base_frames")
        _choice(self, "pos_embed", ("sincos", "rope"))
        _choice(self, "sincos_repeat", ("none", "window", "interleave"))
        _choice(self, "attention", ("full", "window", "strided"))
        _choice(self, "mamba_order", ("pre", "post"))
        _choice(self, "mamba_gate_fn", ("tanh", "none"))
        check_num_frames(self.num_frames, f"{PREFIX}.num_frames", self.time_compressed_rate)
        for key in ("latent_height", "latent_width"):
            if getattr(self, key) % self.patch_size:
                raise InputError(f"{PREFIX}.{key}={getattr(self, key)}: must be a multiple of "
                                 f"{PREFIX}.patch_size={self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise InputError(f"{PREFIX}.num_heads={self.num_heads}: must divide "
                             f"{PREFIX}.hidden_size={self.hidden_size}")
        if self.pos_embed == "rope" and self.head_dim % 16:
            raise InputError(f"{PREFIX}.pos_embed=rope: head dim {self.head_dim} (hidden_size/num_heads) "
                             "must be a multiple of 16 to split into t/h/w rotary pairs")
        if self.pos_embed == "sincos" and self.hidden_size % 16:
            raise InputError(f"{PREFIX}.hidden_size={self.hidden_size}: must be a multiple of 16 "
                             "for 3D sin-cos")
        if self.learnable_pos_embed and self.pos_embed != "rope":  # diffusers refuses to load it, as no model has it
            raise InputError(f"{PREFIX}.learnable_pos_embed: needs {PREFIX}.pos_embed=rope (CogVideoX's learned "
                             f"positions come with RoPE, the 5B I2V model); it is {self.pos_embed!r}")
        if self.sincos_repeat != "none" and self.pos_embed != "sincos":
            raise InputError(f"{PREFIX}.sincos_repeat={self.sincos_repeat}: needs {PREFIX}.pos_embed=sincos")
        check_frames(self, self.latent_frames)
        if self.mamba:
            d_inner = self.mamba_expand * self.mamba_width
            if d_inner % self.mamba_head_dim:
                raise InputError(f"{PREFIX}.mamba_headdim={self.mamba_head_dim}: must divide mamba_expand * "
                                 f"mamba width = {d_inner}")
            if (d_inner // self.mamba_head_dim) % self.mamba_ngroups:
                raise InputError(f"{PREFIX}.mamba_ngroups={self.mamba_ngroups}: must divide the Mamba head "
                                 f"count {d_inner // self.mamba_head_dim}")
        return self


def num_windows(cfg: DiTConfig, frames: int) -> int:
    return (frames - cfg.attn_prefix_frames) // cfg.attn_window


def check_frames(cfg: DiTConfig, frames: int) -> None:
    """Geometry rules that depend on the number of latent frames (checked again at forward time)."""
    P, A = cfg.attn_prefix_frames, cfg.attn_window
    src = f"{PREFIX}.num_frames={cfg.num_frames}" if frames == cfg.latent_frames else "the input"
    if cfg.learnable_pos_embed and frames != cfg.base_frames and cfg.attention == "full":
        raise InputError(f"{PREFIX}.learnable_pos_embed: covers {cfg.base_frames} latent frames but {src} "
                         f"gives {frames}; use {PREFIX}.attention=window to tile it over windows")
    needs_windows = (cfg.attention != "full" or cfg.sincos_repeat == "window"
                     or (cfg.learnable_pos_embed and frames != cfg.base_frames))
    if needs_windows:
        if P < 0:
            raise InputError(f"{PREFIX}.attn_prefix_frames={P}: must be >= 0")
        if frames - P < A or (frames - P) % A:
            raise InputError(f"{PREFIX}.attn_window={A}: must divide the latent frames after "
                             f"{PREFIX}.attn_prefix_frames ({frames} - {P} = {frames - P}); "
                             f"{src} gives {frames} latent frames")
    if cfg.repeat_attn_steps:
        if cfg.attention != "window":
            raise InputError(f"{PREFIX}.repeat_attn_steps={cfg.repeat_attn_steps}: "
                             f"needs {PREFIX}.attention=window")
        W = num_windows(cfg, frames)
        if not 0 < cfg.repeat_attn_steps < W:
            raise InputError(f"{PREFIX}.repeat_attn_steps={cfg.repeat_attn_steps}: must be in "
                             f"[0, {W}) for {W} windows ({src})")
    if cfg.sincos_repeat == "interleave" and (frames - 1) % (cfg.sincos_base_frames - 1 or 1):
        raise InputError(f"{PREFIX}.sincos_base_frames={cfg.sincos_base_frames}: its frames minus one must "
                         f"divide {frames} - 1 latent frames ({src})")


def _check_types(cfg: DiTConfig) -> None:
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        want = {"int": int, "float": (int, float), "bool": bool, "str": str}[str(f.type)]
        bad = isinstance(v, bool) and want is not bool or not isinstance(v, want)
        if bad:
            raise InputError(f"{PREFIX}.{f.name}={v!r}: expected {f.type}")


def _positive(cfg: DiTConfig, *keys: str) -> None:
    for k in keys:
        if getattr(cfg, k) <= 0:
            raise InputError(f"{PREFIX}.{k}={getattr(cfg, k)}: must be > 0")


def _choice(cfg: DiTConfig, key: str, allowed: tuple[str, ...]) -> None:
    if getattr(cfg, key) not in allowed:
        raise InputError(f"{PREFIX}.{key}={getattr(cfg, key)!r}: must be one of {', '.join(allowed)}")
