"""Joint [text; video] self-attention and its long-video layouts (seed-analysis §1.1, §1.4, §1.5).

One `Attention` module serves three layouts, chosen per forward by an `AttnPlan`:
  * full:    every token attends to every token.
  * window:  windows of prefix+window latent frames (stride `window`), each with all text tokens,
             batched into one SDPA call; outputs summed and divided by per-token counts, so
             overlapping frames are averaged and text outputs are averaged over computed windows.
             `repeat_steps` = k skips the last k windows and adds the last computed window's
             (un-normalised) output into them instead, exactly like the seed, quirk included.
  * strided: text + prefix frames + every step-th later frame; outputs repeated `step` times in time.
q/k/v and QK-LayerNorm are per-token, so they are computed once for the whole sequence and shared by
overlapping windows; RoPE is applied per window because positions restart at 0 in every window.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from longvid.models.embeddings import apply_rope


@dataclass
class AttnPlan:
    text_len: int
    frames: int
    frame_tokens: int
    mode: str = "full"  # full | window | strided
    prefix: int = 0
    window: int = 0
    repeat_steps: int = 0
    rope: torch.Tensor | None = None  # complex rotations for the sequence ONE attention call sees
    index: torch.Tensor | None = None  # window: (computed windows, S); strided: (S,)
    counts: torch.Tensor | None = None  # window: (N, 1) contributions per token
    spans: tuple[tuple[int, int], ...] = ()  # window: video-token span of every window


def make_plan(mode: str, text_len: int, frames: int, frame_tokens: int, prefix: int, window: int,
              repeat_steps: int, rope: torch.Tensor | None,
              device: torch.device) -> AttnPlan:
    """Geometry was validated by DiTConfig; a single window (or stride 1) is plain full attention."""
    L, n = text_len, frame_tokens
    plan = AttnPlan(L, frames, n, "full", prefix, window, repeat_steps, rope)
    if mode == "full" or frames == prefix + window:
        return plan
    text = torch.arange(L, device=device)
    if mode == "strided":
        step = (frames - prefix) // window
        keep = torch.arange(prefix, frames, step, device=device)
        frame_ids = torch.cat([torch.arange(prefix, device=device), keep])
        video = (frame_ids[:, None] * n + torch.arange(n, device=device)).flatten()
        plan.mode, plan.index = "strided", torch.cat([text, L + video])
        return plan
    num = (frames - prefix) // window
    spans = tuple((i * window * n, (prefix + (i + 1) * window) * n) for i in range(num))
    computed = num - repeat_steps
    index = torch.stack([torch.cat([text, L + torch.arange(s, e, device=device)])
                         for s, e in spans[:computed]])
    counts = torch.zeros(L + frames * n, 1, device=device)
    counts[:L] = computed
    for s, e in spans:
        counts[L + s:L + e] += 1
    plan.mode, plan.index, plan.counts, plan.spans = "window", index, counts, spans
    return plan


class Attention(nn.Module):
    """Fused q|k|v projection (rows ordered q, k, v), per-head QK-LayerNorm, SDPA, output projection."""

    def __init__(self, dim: int, heads: int, qk_norm: bool = True, eps: float = 1e-6):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.to_qkv = nn.Linear(dim, 3 * dim)
        self.norm_q = nn.LayerNorm(self.head_dim, eps=eps) if qk_norm else nn.Identity()
        self.norm_k = nn.LayerNorm(self.head_dim, eps=eps) if qk_norm else nn.Identity()
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, plan: AttnPlan) -> torch.Tensor:
        B, N, _D = x.shape
        q, k, v = self.to_qkv(x).view(B, N, 3, self.heads, self.head_dim).unbind(2)
        q, k = self.norm_q(q), self.norm_k(k)
        if plan.mode == "full":
            return self._attend(q, k, v, plan.rope)
        if plan.mode == "strided":
            idx = plan.index
            y = self._attend(q[:, idx], k[:, idx], v[:, idx], plan.rope)
            head = plan.text_len + plan.prefix * plan.frame_tokens
            step = (plan.frames - plan.prefix) // plan.window
            kept = y[:, head:].unflatten(1, (plan.window, plan.frame_tokens))
            return torch.cat([y[:, :head], kept.repeat_interleave(step, dim=1).flatten(1, 2)], dim=1)
        return self._windows(q, k, v, plan)

    def _attend(self, q, k, v, rope) -> torch.Tensor:
        """(B, S, H, hd) x3 -> (B, S, D) after the output projection."""
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.to_out(o.transpose(1, 2).flatten(2))

    def _windows(self, q, k, v, plan: AttnPlan) -> torch.Tensor:
        B, N, H, hd = q.shape
        idx = plan.index
        computed, S = idx.shape
        y = self._attend(q[:, idx].flatten(0, 1), k[:, idx].flatten(0, 1), v[:, idx].flatten(0, 1), plan.rope)
        y = y.view(B, computed, S, H * hd)
        L = plan.text_len
        # the seed adds per-window outputs (after the output projection) into a zero buffer
        out = y.new_zeros(B, N, H * hd)
        out[:, :L] = y[:, :, :L].sum(1)
        for i, (s, e) in enumerate(plan.spans[:computed]):
            out[:, L + s:L + e] += y[:, i, L:]
        ls, le = plan.spans[computed - 1]
        for s, e in plan.spans[computed:]:
            out[:, L + s:L + e] += out[:, L + ls:L + le].clone()
        return out / plan.counts.to(out.dtype)
