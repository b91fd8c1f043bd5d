"""Joint [text; video] self-attention and its long-video layouts (seed-analysis §1.1, §1.4, §1.5).

One `Attention` module serves three layouts, chosen per forward by an `AttnPlan`:
  * full:    every token attends to every token.
  * window:  windows of prefix+window latent frames (stride `window`), each with all text tokens,
             batched into one SDPA call; outputs summed and divided by per-token counts, so
             overlapping frames are averaged and text outputs are averaged over computed windows.
             `repeat_steps` = k skips the last k windows and adds the last computed window's
             (un-normalised) output into them instead, exactly like the seed, quirk included.
  * strided: text + prefix frames + every step-th later frame; outputs repeated `step` times in time.
Windows are gathered from the attention input, before the q/k/v projection: one copy where gathering
q, k and v took three (and three scatter-adds back), at the price of projecting the ~6 % of tokens that
two windows share twice. RoPE is applied per window because positions restart at 0 in every window.
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
    index: torch.Tensor | None = None  # strided: (S,) tokens kept
    counts: torch.Tensor | None = None  # window: (N, 1) contributions per token
    spans: tuple[tuple[int, int], ...] = ()  # window: video-token span of every window

    @property
    def computed(self) -> int:
        """window: how many windows attention runs on (the last repeat_steps reuse the last one)"""
        return len(self.spans) - self.repeat_steps


def make_plan(mode: str, text_len: int, frames: int, frame_tokens: int, prefix: int, window: int,
              repeat_steps: int, rope: torch.Tensor | None,
              device: torch.device) -> AttnPlan:
    """Geometry was validated by DiTConfig; a single window (or stride 1) is plain full attention."""
    L, n = text_len, frame_tokens
    plan = AttnPlan(L, frames, n, "full", prefix, window, repeat_steps, rope)
    if mode == "full" or frames == prefix + window:
        return plan
    if mode == "strided":
        text = torch.arange(L, device=device)
        step = (frames - prefix) // window
        keep = torch.arange(prefix, frames, step, device=device)
        frame_ids = torch.cat([torch.arange(prefix, device=device), keep])
        video = (frame_ids[:, None] * n + torch.arange(n, device=device)).flatten()
        plan.mode, plan.index = "strided", torch.cat([text, L + video])
        return plan
    num = (frames - prefix) // window
    spans = tuple((i * window * n, (prefix + (i + 1) * window) * n) for i in range(num))
    counts = torch.zeros(L + frames * n, 1, device=device)
    counts[:L] = num - repeat_steps
    for s, e in spans:
        counts[L + s:L + e] += 1
    plan.mode, plan.counts, plan.spans = "window", counts, spans
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
        if plan.mode == "window":
            y = self._attend(*self._qkv(_GatherWindows.apply(x, plan)), plan.rope)
            return _ScatterWindows.apply(y.unflatten(0, (x.shape[0], plan.computed)), plan)
        q, k, v = self._qkv(x)
        if plan.mode == "full":
            return self._attend(q, k, v, plan.rope)
        idx = plan.index  # strided
        y = self._attend(q[:, idx], k[:, idx], v[:, idx], plan.rope)
        head = plan.text_len + plan.prefix * plan.frame_tokens
        step = (plan.frames - plan.prefix) // plan.window
        kept = y[:, head:].unflatten(1, (plan.window, plan.frame_tokens))
        return torch.cat([y[:, :head], kept.repeat_interleave(step, dim=1).flatten(1, 2)], dim=1)

    def _qkv(self, x: torch.Tensor):
        """(B, S, D) -> q, k, v (B, S, H, hd), q and k normalised per head."""
        B, S, _D = x.shape
        q, k, v = self.to_qkv(x).view(B, S, 3, self.heads, self.head_dim).unbind(2)
        return self.norm_q(q), self.norm_k(k), v

    def _attend(self, q, k, v, rope) -> torch.Tensor:
        """(B, S, H, hd) x3 -> (B, S, D) after the output projection."""
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.to_out(o.transpose(1, 2).flatten(2))


# The windows' gather and scatter with hand-written backwards: as indexing and slice-adds, autograd
# zero-filled a full-size gradient per index and per slice and scattered into it (a third of the
# windowed layer's time outside attention itself went there).

def _add_spans(dst: torch.Tensor, src: torch.Tensor, spans) -> None:
    """dst (B, rows, D) = src (B, windows, span, D) summed at each window's span; rows no span covers
    are 0. Spans come in order and end in order, so a row is written first, then added to."""
    done = 0  # rows [0, done) hold something
    for i, (s, e) in enumerate(spans):
        dst[:, done:s].zero_()
        seen = max(0, min(done, e) - s)  # rows [s, s + seen) already hold an earlier window's share
        dst[:, s:s + seen] += src[:, i, :seen]
        dst[:, s + seen:e] = src[:, i, seen:]
        done = max(done, e)
    dst[:, done:].zero_()


def _window_rows(x: torch.Tensor, plan: AttnPlan) -> torch.Tensor:
    """x (B, N, D) -> (B, computed windows, S, D): the text, then each window's frames."""
    L, spans = plan.text_len, plan.spans[:plan.computed]
    out = x.new_empty(x.shape[0], len(spans), L + spans[0][1] - spans[0][0], x.shape[-1])
    out[:, :, :L] = x[:, None, :L]
    for i, (s, e) in enumerate(spans):
        out[:, i, L:] = x[:, L + s:L + e]
    return out


class _GatherWindows(torch.autograd.Function):
    """x (B, N, D) -> (B * computed windows, S, D); the backward sums the windows' gradients back."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, plan: AttnPlan) -> torch.Tensor:
        ctx.plan = plan
        return _window_rows(x, plan).flatten(0, 1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        plan, L = ctx.plan, ctx.plan.text_len
        g = grad.unflatten(0, (-1, plan.computed))
        gx = g.new_empty(g.shape[0], plan.counts.shape[0], g.shape[-1])
        torch.sum(g[:, :, :L], 1, out=gx[:, :L])
        _add_spans(gx[:, L:], g[:, :, L:], plan.spans[:plan.computed])
        return gx, None


class _ScatterWindows(torch.autograd.Function):
    """y (B, computed windows, S, D) -> (B, N, D): the seed adds per-window outputs (after the output
    projection) into a zero buffer, the skipped windows add the last computed window's sum, and every
    token is divided by its count."""

    @staticmethod
    def forward(ctx, y: torch.Tensor, plan: AttnPlan) -> torch.Tensor:
        ctx.plan, L = plan, plan.text_len
        out = y.new_empty(y.shape[0], plan.counts.shape[0], y.shape[-1])
        torch.sum(y[:, :, :L], 1, out=out[:, :L])
        _add_spans(out[:, L:], y[:, :, L:], plan.spans[:plan.computed])
        ls, le = plan.spans[plan.computed - 1]
        for s, e in plan.spans[plan.computed:]:
            out[:, L + s:L + e] += out[:, L + ls:L + le].clone()
        return out.div_(plan.counts.to(out.dtype))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        plan, L = ctx.plan, ctx.plan.text_len
        g = grad / plan.counts.to(grad.dtype)
        ls, le = plan.spans[plan.computed - 1]
        for s, e in reversed(plan.spans[plan.computed:]):  # the skipped windows' adds, undone in reverse
            g[:, L + ls:L + le] += g[:, L + s:L + e].clone()
        return _window_rows(g, plan), None
