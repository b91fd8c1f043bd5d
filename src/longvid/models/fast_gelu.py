"""`gelu_tanh(x)`: F.gelu(x, approximate="tanh"), the DiT MLP's activation, with CPU fp32 tensors run
through one C pass forward and one backward (cpu_kernels). PyTorch's CPU kernel for the tanh form took
about 2 ns per element, 9-13 ms per call forward and as much backward at 9.5k tokens x 512 on one core
(a tenth of the windowed model's step outside attention); the C loop about 2. Elsewhere (GPU tensors,
other dtypes, autocast, no C compiler) F.gelu runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from longvid.models import cpu_kernels


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    if cpu_kernels.applies(x) and not torch.is_autocast_enabled("cpu"):
        return _GeluTanh.apply(x)
    return F.gelu(x, approximate="tanh")


class _GeluTanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return cpu_kernels.gelu_tanh_forward(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return cpu_kernels.gelu_tanh_backward(x, grad)
