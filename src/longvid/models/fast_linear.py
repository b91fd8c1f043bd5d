"""`linear(x, weight, bias)`: F.linear, with the CPU fp32 products run by oneDNN instead of the BLAS;
`split_linear`: the same per block of output rows, with one input gradient for all of them.

On the AMD EPYC machines this project's CPU runs use, the MKL sgemm behind F.linear reached 75-80
GFLOP/s on one core for the Mamba2 projections (9.5k rows, 128-512 wide) and oneDNN's matmul 86-97,
and a projection's forward + backward took 12-15 % less time. Below about 2^24 multiply-adds per
product oneDNN's per-call overhead wins instead (the demo's tiny model, 448 rows 64 wide: 4 % slower
per step), so small products stay with F.linear. The weight gradient stays a BLAS product: oneDNN would
need both operands transposed into copies first, which cost more than it saved. Everything else (GPU
tensors, other dtypes, autocast, builds without oneDNN) goes to F.linear.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

MIN_ONEDNN_MACS = 1 << 24  # rows * in * out; forward + backward ratios at 64-256 wide crossed 1 near here


def _onednn_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn_product(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = _onednn_product(grad, weight.t().contiguous(), None)
        rows = grad.reshape(-1, grad.shape[-1])
        if ctx.needs_input_grad[1]:
            gw = rows.t() @ x.reshape(-1, x.shape[-1])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = rows.sum(0)
        return gx, gw, gb


def _onednn_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32 and x.dim() >= 2
            and x.numel() // max(x.shape[-1], 1) * weight.numel() >= MIN_ONEDNN_MACS
            and weight.is_contiguous() and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled and not torch.is_autocast_enabled("cpu"))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias), through oneDNN for CPU fp32 tensors (see the module docstring)."""
    if _onednn_applies(x, weight):
        return _OneDNNLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


class _SplitLinear(torch.autograd.Function):
    """The products of x with consecutive row blocks of one weight. Their input gradients accumulate
    into one tensor (addmm in place), where separate linears left autograd to add them afterwards,
    a pass over the input's gradient per block."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, sizes: tuple[int, ...]):
        ctx.save_for_backward(x, weight)
        ctx.has_bias, ctx.sizes = bias is not None, sizes
        return tuple(linear(x, W, b) for W, b in _blocks(weight, bias, sizes))

    @staticmethod
    def backward(ctx, *grads: torch.Tensor | None):
        x, weight = ctx.saved_tensors
        rows = x.reshape(-1, x.shape[-1])
        gx = None
        gw = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None  # blocks without a gradient: 0
        gb = weight.new_zeros(weight.shape[0]) if ctx.has_bias and ctx.needs_input_grad[2] else None
        for n, end, grad in zip(ctx.sizes, itertools.accumulate(ctx.sizes), grads):
            if grad is None or n == 0:
                continue
            g = grad.reshape(-1, n)
            if ctx.needs_input_grad[0]:
                gx = g @ weight[end - n:end] if gx is None else gx.addmm_(g, weight[end - n:end])
            if gw is not None:
                torch.mm(g.t(), rows, out=gw[end - n:end])
            if gb is not None:
                torch.sum(g, 0, out=gb[end - n:end])
        gx = None if gx is None else gx.view(x.shape)
        return gx, gw, gb, None


def split_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 sizes: list[int]) -> list[torch.Tensor]:
    """[linear(x, W_i, b_i)] for the consecutive row blocks W_i of weight of the given sizes. For CPU fp32
    (see `linear`) one autograd node with a single input gradient; elsewhere separate linears."""
    if _onednn_applies(x, weight):
        return list(_SplitLinear.apply(x, weight, bias, tuple(sizes)))
    return [linear(x, W, b) for W, b in _blocks(weight, bias, sizes)]


def _blocks(weight: torch.Tensor, bias: torch.Tensor | None, sizes):
    """(rows, bias) of each consecutive block of `sizes` rows."""
    for n, end in zip(sizes, itertools.accumulate(sizes)):
        yield weight[end - n:end], None if bias is None else bias[end - n:end]
