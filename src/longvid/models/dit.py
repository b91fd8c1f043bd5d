"""CogVideoX diffusion transformer with the seed's long-video variants (seed-analysis §1).

    x (B, T, C, H, W), timesteps (B,), context (B, L, text_dim) -> v-prediction (B, T, C_out, H, W)

A block: expert adaptive LayerNorm (one shared LayerNorm, separate shift/scale/gate for text and
video tokens), joint [text; video] attention with QK-LayerNorm, then the same for a GELU MLP.
Long-video variants live inside the attention branch, as in the seed (§1.5): windowed or strided
attention (attention.py), and optionally a bidirectional Mamba2 pair placed before ("pre") or after
("post") it. The Mamba gates are per-channel, zero-initialised, so a fresh hybrid model computes
exactly what the same model without Mamba computes.

Parameter names follow diffusers' CogVideoXTransformer3DModel except for the fused `attn1.to_qkv`,
`attn1.to_out` (diffusers `to_out.0`) and `ff.fc_in`/`ff.fc_out` (diffusers `ff.net.0.proj`/`ff.net.2`);
Mamba modules use the seed's names per block. See convert_diffusers.py for the full mapping.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from longvid.io import InputError
from longvid.models import embeddings as E
from longvid.models.attention import Attention, AttnPlan, make_plan
from longvid.models.config import PREFIX, DiTConfig, check_frames
from longvid.models.fast_gelu import gelu_tanh
from longvid.models.scan_order import gated_residual, scan_norm


class AdaLNZero(nn.Module):
    """Shared LayerNorm, separate modulation for text and video (diffusers naming)."""

    def __init__(self, cond_dim: int, dim: int, eps: float):
        super().__init__()
        self.linear = nn.Linear(cond_dim, 6 * dim)  # video shift, scale, gate; text shift, scale, gate
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, text: torch.Tensor, video: torch.Tensor, cond: torch.Tensor):
        shift, scale, gate, t_shift, t_scale, t_gate = self.linear(cond)[:, None].chunk(6, dim=-1)
        text = torch.addcmul(t_shift, self.norm(text), 1 + t_scale)
        video = torch.addcmul(shift, self.norm(video), 1 + scale)
        return text, video, t_gate, gate


class FeedForward(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.fc_in = nn.Linear(dim, inner)
        self.fc_out = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(gelu_tanh(self.fc_in(x)))


class MambaBlock(nn.Module):
    """mamba_ssm's Block with d_intermediate=0: pre-LayerNorm then the Mamba2 mixer (only the mixer
    output is used; the seed discards the Block's residual)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        from longvid.models.mamba2 import Mamba2

        self.norm = nn.LayerNorm(cfg.mamba_width, eps=cfg.mamba_norm_eps)
        self.mixer = Mamba2(d_model=cfg.mamba_width, d_state=cfg.mamba_d_state, d_conv=cfg.mamba_d_conv,
                            expand=cfg.mamba_expand, headdim=cfg.mamba_head_dim, ngroups=cfg.mamba_ngroups,
                            chunk_size=cfg.mamba_chunk_size)

    def forward(self, x: torch.Tensor, keep: int = 0, reverse: bool = False) -> torch.Tensor:
        """The mixer's output, in scan order: with `reverse` the rows from `keep` on are read last to
        first (by the norm itself, scan_order.py) and the output stays in that order."""
        return self.mixer(scan_norm(x, self.norm, keep, reverse))


class ScanBlock(nn.Module):
    """One scan direction, added to a residual through a gate. Backward keeps the text tokens in front
    and reverses only the video tokens. Linear width adapters wrap the block when the Mamba width differs
    from the model's (2B)."""

    def __init__(self, cfg: DiTConfig, backward: bool):
        super().__init__()
        self.backward = backward
        self.block = MambaBlock(cfg)
        adapt = cfg.mamba_width != cfg.hidden_size
        self.in_projection = nn.Linear(cfg.hidden_size, cfg.mamba_width) if adapt else nn.Identity()
        self.out_projection = nn.Linear(cfg.mamba_width, cfg.hidden_size) if adapt else nn.Identity()

    def forward(self, x: torch.Tensor, L: int, gate: Gate, residual: torch.Tensor) -> torch.Tensor:
        """residual + gate alpha * (scan of x). The adapters act per token, so they commute with the
        reordering, which happens inside the block's norm and the gated residual (scan_order.py)."""
        m = self.out_projection(self.block(self.in_projection(x), L, self.backward))
        return gated_residual(residual, gate.alpha(), m, L, self.backward)


class Gate(nn.Module):
    """A scan's per-channel gate (seed `scan*_gating`); ScanBlock applies it with the residual add."""

    def __init__(self, dim: int, fn: str, init: float):
        super().__init__()
        self.fn = fn
        self.gating_alpha = nn.Parameter(torch.full((dim,), float(init)))

    def alpha(self) -> torch.Tensor:
        return torch.tanh(self.gating_alpha) if self.fn == "tanh" else self.gating_alpha


class DiTBlock(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        D = cfg.hidden_size
        self.norm1 = AdaLNZero(cfg.time_embed_dim, D, cfg.norm_eps)
        self.attn1 = Attention(D, cfg.num_heads, cfg.qk_norm)
        self.norm2 = AdaLNZero(cfg.time_embed_dim, D, cfg.norm_eps)
        self.ff = FeedForward(D, cfg.mlp_ratio * D)
        self.mamba_order, self.parallel_scan = cfg.mamba_order, cfg.mamba_parallel_scan
        self.has_mamba = cfg.mamba
        if cfg.mamba:
            self.mamba_scan1 = ScanBlock(cfg, backward=False)
            self.mamba_scan2 = ScanBlock(cfg, backward=True)
            self.scan1_gating = Gate(D, cfg.mamba_gate_fn, cfg.mamba_gate_init)
            self.scan2_gating = Gate(D, cfg.mamba_gate_fn, cfg.mamba_gate_init)

    def forward(self, text: torch.Tensor, video: torch.Tensor, cond: torch.Tensor, plan: AttnPlan):
        # Text and video stay separate tensors: they only meet inside the attention branch, which
        # saves a concatenation and its backward per sub-layer compared with one joint tensor.
        t, v, t_gate, gate = self.norm1(text, video, cond)
        t, v = self._mix(torch.cat([t, v], dim=1), plan).split([text.shape[1], video.shape[1]], dim=1)
        text, video = torch.addcmul(text, t_gate, t), torch.addcmul(video, gate, v)
        t, v, t_gate, gate = self.norm2(text, video, cond)
        return torch.addcmul(text, t_gate, self.ff(t)), torch.addcmul(video, gate, self.ff(v))

    def _mix(self, h: torch.Tensor, plan: AttnPlan) -> torch.Tensor:
        """The attention branch: attention alone, or attention and Mamba in the configured order."""
        if not self.has_mamba:
            return self.attn1(h, plan)
        if self.mamba_order == "post":
            return self._scan(self.attn1(h, plan), plan.text_len)
        return self.attn1(self._scan(h, plan.text_len), plan)

    def _scan(self, h: torch.Tensor, L: int) -> torch.Tensor:
        s = self.mamba_scan1(h, L, self.scan1_gating, residual=h)
        return self.mamba_scan2(h if self.parallel_scan else s, L, self.scan2_gating, residual=s)


class FinalNorm(nn.Module):
    """LayerNorm modulated by (shift, scale) from the timestep embedding (diffusers `norm_out`)."""

    def __init__(self, cond_dim: int, dim: int, eps: float):
        super().__init__()
        self.linear = nn.Linear(cond_dim, 2 * dim)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift, scale = self.linear(cond)[:, None].chunk(2, dim=-1)
        return torch.addcmul(shift, self.norm(x), 1 + scale)


class DiT(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.config = cfg.validate()
        D = cfg.hidden_size
        self.patch_embed = E.PatchEmbed(cfg)
        self.time_embedding = E.TimestepEmbedding(D, cfg.time_embed_dim)
        self.transformer_blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.num_layers))
        self.norm_final = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.norm_out = FinalNorm(cfg.time_embed_dim, D, cfg.norm_eps)
        self.proj_out = nn.Linear(D, cfg.patch_size ** 2 * cfg.out_channels)
        self.gradient_checkpointing = cfg.gradient_checkpointing
        self._cache: dict[tuple, object] = {}
        self._init_weights()

    def _init_weights(self) -> None:
        """SAT's init: N(0, 0.02) inputs, depth-scaled outputs, zero adaLN (blocks start as identity)."""
        out_std = 0.02 / math.sqrt(2 * self.config.num_layers)
        for blk in self.transformer_blocks:
            for lin, std in ((blk.attn1.to_qkv, 0.02), (blk.ff.fc_in, 0.02),
                             (blk.attn1.to_out, out_std), (blk.ff.fc_out, out_std)):
                nn.init.normal_(lin.weight, std=std)
                nn.init.zeros_(lin.bias)
            for lin in (blk.norm1.linear, blk.norm2.linear):
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)
        nn.init.xavier_uniform_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    # ---- geometry-dependent tables, cached per input shape ---------------------------------------
    def _cached(self, key: tuple, build):
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def _plan(self, L: int, T: int, gh: int, gw: int, device: torch.device) -> AttnPlan:
        cfg = self.config

        def build() -> AttnPlan:
            rope = None
            if cfg.pos_embed == "rope":
                frames = T if cfg.attention == "full" else cfg.attn_prefix_frames + cfg.attn_window
                rope = E.rope_tables(cfg.head_dim, frames, gh, gw, cfg.rope_theta, L, device)
            return make_plan(cfg.attention, L, T, gh * gw, cfg.attn_prefix_frames, cfg.attn_window,
                             cfg.repeat_attn_steps, rope, device)

        return self._cached(("plan", L, T, gh, gw, str(device)), build)

    def check_inputs(self, x: torch.Tensor, context: torch.Tensor, image_latent: torch.Tensor | None) -> None:
        """Input geometry errors, raised before any compute, naming the config key."""
        cfg = self.config
        if x.dim() != 5:
            raise InputError(f"DiT input: expected (B, T, C, H, W) latents, got shape {tuple(x.shape)}")
        B, T, C, H, W = x.shape
        if image_latent is not None:
            if image_latent.dim() != 5 or image_latent.shape[:2] + image_latent.shape[3:] != (B, T, H, W):
                raise InputError(f"DiT image_latent: shape {tuple(image_latent.shape)} does not match the "
                                 f"latents' {tuple(x.shape)} outside the channel axis")
            C += image_latent.shape[2]
        if C != cfg.in_channels:
            raise InputError(f"{PREFIX}.in_channels={cfg.in_channels}: the input has {C} channels "
                             f"(latent{' + image latent' if image_latent is not None else ''})")
        if H % cfg.patch_size or W % cfg.patch_size:
            raise InputError(f"{PREFIX}.patch_size={cfg.patch_size}: must divide the latent size {H}x{W}")
        if context.dim() != 3 or context.shape[-1] != cfg.text_dim:
            raise InputError(f"{PREFIX}.text_dim={cfg.text_dim}: context has shape {tuple(context.shape)}")
        if cfg.learnable_pos_embed:
            if context.shape[1] != cfg.text_length:
                raise InputError(f"{PREFIX}.text_length={cfg.text_length}: "
                                 f"context has {context.shape[1]} tokens")
            if (H, W) != (cfg.latent_height, cfg.latent_width):
                raise InputError(f"{PREFIX}.latent_height/latent_width={cfg.latent_height}x"
                                 f"{cfg.latent_width}: the learnable position embedding does not fit a "
                                 f"{H}x{W} latent")
        check_frames(cfg, T)

    # ---- forward ----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                image_latent: torch.Tensor | None = None) -> torch.Tensor:
        self.check_inputs(x, context, image_latent)
        cfg, p = self.config, self.config.patch_size
        dtype = self.proj_out.weight.dtype
        if image_latent is not None:  # I2V: image latent concatenated on channels
            x = torch.cat([x, image_latent], dim=2)
        B, T, _, H, W = x.shape
        gh, gw, L = H // p, W // p, context.shape[1]

        timesteps = torch.as_tensor(timesteps, device=x.device).reshape(-1).expand(B)  # scalar or (B,)
        emb = self.time_embedding(E.timestep_embedding(timesteps, cfg.hidden_size).to(dtype))
        cond = F.silu(emb)
        text = self.patch_embed.text_proj(context.to(dtype))
        video = self.patch_embed.patchify(x.to(dtype))
        if cfg.pos_embed == "sincos":
            table = self._cached(("sincos", T, gh, gw, str(x.device)),
                                 lambda: E.sincos_table(cfg, T, gh, gw).to(x.device))
            video = video + table.to(dtype)
        if self.patch_embed.pos_embedding is not None:
            pos = E.learned_pos_rows(cfg, self.patch_embed.pos_embedding, T)
            text, video = text + pos[:, :L], video + pos[:, L:]

        plan = self._plan(L, T, gh, gw, x.device)
        for blk in self.transformer_blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                text, video = checkpoint(blk, text, video, cond, plan, use_reentrant=False)
            else:
                text, video = blk(text, video, cond, plan)

        v = self.proj_out(self.norm_out(self.norm_final(video), cond))
        v = v.view(B, T, gh, gw, cfg.out_channels, p, p).permute(0, 1, 4, 2, 5, 3, 6)
        return v.reshape(B, T, cfg.out_channels, H, W)
