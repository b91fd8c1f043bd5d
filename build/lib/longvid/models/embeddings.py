"""Inputs of the DiT: patch/text embedding, timestep embedding, 3D sin-cos and 3D RoPE tables.

Token order everywhere is [text ; video], video tokens in (t, h, w) raster order (seed-analysis §1.1).
Tables are plain functions of the geometry so the DiT can cache them per input shape.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from longvid.models.config import DiTConfig


# ---- timestep ------------------------------------------------------------------------------------
def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(B,) DDPM indices -> (B, dim) float32, cos half first (SAT; diffusers' flip_sin_to_cos=True)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


class TimestepEmbedding(nn.Module):
    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, t_emb: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(t_emb)))


# ---- patches and text ----------------------------------------------------------------------------
class PatchEmbed(nn.Module):
    """Per-latent-frame 2D patches (kernel = stride = patch) and the text projection.

    `proj` keeps a Conv2d's parameter shapes (checkpoint compatibility with SAT and diffusers) but is
    applied as one matmul over flattened (c, p, q) patches, which is what the strided conv computes.
    """

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        p, D = cfg.patch_size, cfg.hidden_size
        self.patch_size = p
        self.proj = nn.Conv2d(cfg.in_channels, D, kernel_size=p, stride=p)
        self.text_proj = nn.Linear(cfg.text_dim, D)
        self.pos_embedding = None
        if cfg.learnable_pos_embed:  # 5B-I2V: zero-init, trainable, text rows included (seed §1.1)
            rows = cfg.text_length + cfg.frame_tokens * cfg.base_frames
            self.pos_embedding = nn.Parameter(torch.zeros(1, rows, D))
        w = self.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.proj.bias)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C, H, W) -> (B, T*h*w, D)."""
        B, T, C, H, W = x.shape
        p = self.patch_size
        x = x.reshape(B, T, C, H // p, p, W // p, p).permute(0, 1, 3, 5, 2, 4, 6)
        x = x.reshape(B, T * (H // p) * (W // p), C * p * p)
        return F.linear(x, self.proj.weight.flatten(1), self.proj.bias)


# ---- 3D sin-cos (2B) -----------------------------------------------------------------------------
def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """(M,) positions -> (M, dim) as [sin | cos], MAE convention, computed in float64."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    out = pos.double().reshape(-1, 1) * omega[None]
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_3d(dim: int, frames: int, gh: int, gw: int, spatial_interp: float = 1.0,
              time_interp: float = 1.0) -> torch.Tensor:
    """(frames, gh*gw, dim) float32: [temporal dim/4 | spatial 3dim/4], spatial = [w-axis | h-axis]."""
    ds, dt = dim // 4 * 3, dim // 4
    h = (torch.arange(gh, dtype=torch.float32) / spatial_interp)[:, None].expand(gh, gw)
    w = (torch.arange(gw, dtype=torch.float32) / spatial_interp)[None, :].expand(gh, gw)
    spatial = torch.cat([sincos_1d(ds // 2, w), sincos_1d(ds // 2, h)], dim=1)  # width first, as in MAE
    temporal = sincos_1d(dt, torch.arange(frames, dtype=torch.float32) / time_interp)
    table = torch.cat([temporal[:, None].expand(frames, gh * gw, dt),
                       spatial[None].expand(frames, gh * gw, ds)], dim=-1)
    return table.float()


def tile_over_windows(table: torch.Tensor, frames: int, prefix: int, window: int) -> torch.Tensor:
    """Lay a (prefix+window, ...) table over each attention window of `frames`, averaging overlaps.

    Window i covers [i*window, prefix + (i+1)*window): every window then sees the positions it was
    pre-trained with (seed RepeatAttnBasic3D sin-cos and the I2V learnable embedding)."""
    out = table.new_zeros(frames, *table.shape[1:])
    count = table.new_zeros(frames, *[1] * (table.dim() - 1))
    for i in range((frames - prefix) // window):
        s, e = i * window, prefix + (i + 1) * window
        out[s:e] += table
        count[s:e] += 1
    return out / count


def repeat_interleave_frames(table: torch.Tensor, frames: int) -> torch.Tensor:
    """Keep the first frame's row, repeat each later row to fill `frames` (seed RepeatBasic3D)."""
    factor = (frames - 1) // (table.shape[0] - 1)
    return torch.cat([table[:1], table[1:].repeat_interleave(factor, dim=0)], dim=0)


def sincos_table(cfg: DiTConfig, frames: int, gh: int, gw: int) -> torch.Tensor:
    """(frames*gh*gw, hidden) sin-cos rows for the video tokens, per `cfg.sincos_repeat`."""
    D, si, ti = cfg.hidden_size, cfg.spatial_interpolation, cfg.time_interpolation
    if cfg.sincos_repeat == "window":
        base = sincos_3d(D, cfg.attn_prefix_frames + cfg.attn_window, gh, gw, si, ti)
        table = tile_over_windows(base, frames, cfg.attn_prefix_frames, cfg.attn_window)
    elif cfg.sincos_repeat == "interleave":
        table = repeat_interleave_frames(sincos_3d(D, cfg.sincos_base_frames, gh, gw, si, ti), frames)
    else:
        table = sincos_3d(D, frames, gh, gw, si, ti)
    return table.flatten(0, 1)


def learned_pos_rows(cfg: DiTConfig, pos: torch.Tensor, frames: int) -> torch.Tensor:
    """The learnable embedding (1, L + n*base, D) fitted to `frames` by window tiling when needed."""
    if frames == cfg.base_frames:
        return pos
    L, n = cfg.text_length, cfg.frame_tokens
    video = pos[0, L:].view(cfg.base_frames, n, -1)
    video = tile_over_windows(video, frames, cfg.attn_prefix_frames, cfg.attn_window)
    return torch.cat([pos[:, :L], video.flatten(0, 1)[None]], dim=1)


# ---- 3D RoPE (5B) --------------------------------------------------------------------------------
def rope_angles(head_dim: int, frames: int, gh: int, gw: int, theta: float) -> torch.Tensor:
    """(frames*gh*gw, head_dim) float32 angles, channels [t: hd/4 | h: 3hd/8 | w: 3hd/8], each
    frequency duplicated for an interleaved (2i, 2i+1) pair."""

    def axis(n: int, d: int) -> torch.Tensor:
        freqs = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float32)[: d // 2] / d))
        return torch.outer(torch.arange(n, dtype=torch.float32), freqs).repeat_interleave(2, dim=1)

    dt, dh = head_dim // 4, head_dim // 8 * 3
    t, h, w = axis(frames, dt), axis(gh, dh), axis(gw, dh)
    grid = torch.cat([t[:, None, None].expand(frames, gh, gw, dt),
                      h[None, :, None].expand(frames, gh, gw, dh),
                      w[None, None, :].expand(frames, gh, gw, dh)], dim=-1)
    return grid.reshape(frames * gh * gw, head_dim)


def rope_tables(head_dim: int, frames: int, gh: int, gw: int, theta: float, text_len: int,
                device: torch.device | None = None) -> torch.Tensor:
    """(text_len + frames*gh*gw, 1, head_dim/2) complex64 unit rotations, one per interleaved pair.

    Text rows are the identity rotation, so RoPE is applied to the whole [text; video] sequence in
    one pass instead of slicing out the video tokens. Treating the pair (x1, x2) as x1 + i*x2, the
    rotation (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin) is one complex multiply: one memory pass
    instead of the four of cos/sin tables."""
    ang = rope_angles(head_dim, frames, gh, gw, theta)[:, 0::2]
    ang = torch.cat([torch.zeros(text_len, head_dim // 2), ang])
    return torch.polar(torch.ones_like(ang), ang)[:, None].to(device)


def apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs of x (B, S, H, hd) in float32 (as SAT and diffusers do)."""
    xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(xc * freqs).flatten(-2).to(x.dtype)
