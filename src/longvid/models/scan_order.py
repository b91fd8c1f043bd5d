"""What surrounds a Mamba2 scan in a DiT block: its input LayerNorm and its gated residual, in scan order.

The backward-direction scan reads the video tokens last to first, text tokens staying in front. Rather
than reordering copies of its input and output (two per direction change, forward and backward), the
norm before the mixer reads its rows in scan order and the gated residual after it reads the mixer's
output back in token order. On CPU fp32 both run as one C pass per row (cpu_kernels), with hand-written
backwards; elsewhere as PyTorch ops around the reordering.

    scan_norm(x, norm, keep, reverse)           norm(x in scan order)
    gated_residual(h, alpha, m, keep, reverse)  h + alpha * (m in token order)
"""

from __future__ import annotations

import torch
from torch import nn

from longvid.models import cpu_kernels


def scan_norm(x: torch.Tensor, norm: nn.LayerNorm, keep: int, reverse: bool) -> torch.Tensor:
    """norm(x) with x's rows (b, N, d) in scan order: from `keep` on reversed when `reverse`."""
    if (cpu_kernels.applies(x, norm.weight, norm.bias) and x.dim() == 3 and norm.weight is not None
            and norm.bias is not None):
        return _ScanNorm.apply(x, norm.weight, norm.bias, norm.eps, keep, reverse)
    return norm(to_scan_order(x, keep) if reverse else x)


def gated_residual(h: torch.Tensor, alpha: torch.Tensor, m: torch.Tensor, keep: int,
                   reverse: bool) -> torch.Tensor:
    """h + alpha * m, with m (a scan's output, in scan order) put back in token order."""
    if cpu_kernels.applies(h, alpha, m) and h.shape == m.shape and alpha.shape == h.shape[-1:]:
        return _GatedResidual.apply(h, alpha, m, keep, reverse)
    return torch.addcmul(h, alpha, to_scan_order(m, keep) if reverse else m)


def to_scan_order(x: torch.Tensor, keep: int) -> torch.Tensor:
    """cat([x[:, :keep], x[:, keep:].flip(1)]) as one copy; the reordering is its own inverse."""
    return _Reverse.apply(x, keep)


class _Reverse(torch.autograd.Function):
    """The backward is the same copy of the gradient (autograd's own would zero-fill and add per slice)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: int) -> torch.Tensor:
        ctx.keep = keep
        return _reverse(x, keep)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _reverse(grad, ctx.keep), None


def _reverse(x: torch.Tensor, keep: int) -> torch.Tensor:
    N = x.shape[1]
    order = torch.cat([torch.arange(keep, device=x.device),
                       torch.arange(N - 1, keep - 1, -1, device=x.device)])
    return x.index_select(1, order)


class _ScanNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps: float, keep: int, reverse: bool):
        out, mean, rstd = cpu_kernels.scan_norm_forward(x, weight, bias, eps, keep, reverse)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.order = keep, reverse
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight, mean, rstd = ctx.saved_tensors
        gx, gw, gb = cpu_kernels.scan_norm_backward(x, weight, mean, rstd, grad, *ctx.order)
        return gx, gw, gb, None, None, None


class _GatedResidual(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, alpha, m, keep: int, reverse: bool):
        ctx.save_for_backward(alpha, m)
        ctx.order = keep, reverse
        return cpu_kernels.gated_add_forward(h, alpha, m, keep, reverse)

    @staticmethod
    def backward(ctx, grad):
        alpha, m = ctx.saved_tensors
        galpha, gm = cpu_kernels.gated_add_backward(alpha, m, grad, *ctx.order)
        return grad, galpha, gm, None, None
