"""Mamba2 mixer in plain PyTorch, a drop-in for `mamba_ssm.modules.mamba2.Mamba2`.

Same constructor arguments, parameter names, shapes, init order and forward maths as mamba_ssm, so
state dicts load either way (transformers' `Mamba2Mixer` uses the same names too):

    in_proj   Linear(d_model -> 2*d_inner + 2*ngroups*d_state + nheads), split [z0, x0, z, xBC, dt]
    conv1d    depthwise causal Conv1d over xBC (d_ssm + 2*ngroups*d_state channels)
    dt_bias   (nheads,)  inverse softplus of dt ~ logUniform[dt_min, dt_max]
    A_log     (nheads,)  A = -exp(A_log), A ~ Uniform[A_init_range]
    D         (nheads,)  or (d_ssm,) with D_has_hdim
    norm      gated RMSNorm per group (rmsnorm=True), weight (d_ssm,)
    out_proj  Linear(d_inner -> d_model)

On a CUDA tensor with mamba_ssm installed the forward goes to its fused Triton/CUDA kernels; anywhere
else (CPU machines, tests, `use_kernels=False`) it runs the chunked SSD scan of ssd.py, with the
causal conv and the gated norm below, all three with hand-written backwards (in fp32 on CPU, their
loops and small products run as C code: cpu_kernels.py).
"""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from longvid.models import cpu_kernels
from longvid.models.fast_linear import linear, split_linear
from longvid.models.ssd import ssd_chunked

# The chunk only changes how the scan is computed, never its result. The kernels want 256; in PyTorch
# the work inside chunks grows with the chunk (O(L * chunk * (d_state + headdim))) while the chunk
# hand-overs are few and cheap, and 64 measured fastest on CPU at the seed's d_state 128, forward +
# backward over 9.5k tokens (48 and 96 within 3 %, 32 4 % and 128 7 % slower; 256 2.4x slower in an
# earlier version of the scan).
TORCH_SCAN_CHUNK = 64
# Elements per block of rows for the gated norm and the conv's weight gradient on CPU: 1 MiB in fp32,
# so that a block's chain of elementwise ops runs in cache rather than one pass over memory per op
# (measured best of 2^15..2^20 at the seed's widths).
ROW_BLOCK = 1 << 18


class CausalConv1dSiLU(torch.autograd.Function):
    """silu(depthwise causal conv1d) on (b, L, channels), the layout in_proj gives and the scan wants.

    nn.Conv1d wants (b, channels, L), and transposing to it and back cost 30 % of the mixer's time.
    Here the conv is a 2-D depthwise convolution over a channels-last view of the input: oneDNN's
    kernel reads (b, L, channels) as it is, and writes that layout, 3x faster than shifted
    multiply-adds. Its backward computes the input gradient the same way, but its weight and bias
    gradients took 10x longer than the blocked products below. Computed in at least fp32 (as
    causal-conv1d does inside), returned in the input dtype as the channel groups of `sizes` (x, B, C).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, sizes: list[int]):
        ctx.fused = cpu_kernels.applies(x, weight, bias) and weight.shape[-1] <= cpu_kernels.MAX_TAPS
        if ctx.fused:  # one pass in C, each group written contiguous; the backward recomputes the conv
            x = x.contiguous()
            weight_t = weight.reshape(weight.shape[0], -1).t().contiguous()  # (K, ch): taps in rows
            ctx.save_for_backward(x, weight_t, bias)
            return tuple(cpu_kernels.conv_silu_forward(x, weight_t, bias, sizes))
        ct = torch.promote_types(x.dtype, torch.float32)
        xc = x.to(ct)
        pre = _conv(xc, weight.to(ct), None if bias is None else bias.to(ct))
        ctx.save_for_backward(xc, weight, bias, pre)
        # One silu over the contiguous rows: on the groups' strided slices it ran 3x slower. The first
        # group (the scan's x) is read by several elementwise ops, which also ran 3x slower on a
        # strided view than the copy costs; B and C are copied into chunks by the scan anyway.
        first, *rest = F.silu(pre).to(x.dtype).split(sizes, -1)
        return first.contiguous(), *rest

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        if ctx.fused:
            x, weight_t, bias = ctx.saved_tensors
            gx, gwt, gb = cpu_kernels.conv_silu_backward(x, weight_t, bias, list(grads))
            return gx, gwt.t().contiguous().unsqueeze(1), None if bias is None else gb, None
        xc, weight, bias, pre = ctx.saved_tensors
        b, L, ch = xc.shape
        K = weight.shape[-1]
        gpre = xc.new_empty(b, L + K - 1, ch)  # the conv's output rows: L, then K - 1 beyond the input
        gpre[:, L:] = 0
        gw = xc.new_zeros(K, ch)  # gw[K - 1 - s] = sum_t gpre[t] x[t - s]
        gb = xc.new_zeros(ch)
        # Block by block, so that the gathered gradient, its silu backward and the weight and bias
        # products run in cache rather than as three passes over memory
        for t0, t1 in _row_blocks(xc):
            gy = torch.cat([g[:, t0:t1].to(xc.dtype) for g in grads], -1, out=gpre[:, t0:t1])
            torch.ops.aten.silu_backward.grad_input(gy, pre[:, t0:t1], grad_input=gy)
            gb += gy.sum((0, 1))
            for s in range(min(K, t1)):
                lo = max(t0, s)
                gw[K - 1 - s] += torch.linalg.vecdot(gpre[:, lo:t1], xc[:, lo - s:t1 - s], dim=1).sum(0)
        gx = torch.ops.aten.convolution_backward(
            _as_image(gpre), _as_image(xc), weight.to(xc.dtype).unsqueeze(2), None, [1, 1], [0, K - 1], [1, 1],
            False, [0, 0], ch, [True, False, False])[0].squeeze(2).transpose(1, 2)
        gw = gw.t().reshape(weight.shape).to(weight.dtype)
        gb = None if bias is None else gb.to(bias.dtype)
        return gx.to(grads[0].dtype), gw, gb, None


def _as_image(x: torch.Tensor) -> torch.Tensor:
    """(b, L, ch) -> (b, ch, 1, L), channels-last (a view of contiguous rows)."""
    return x.transpose(1, 2).unsqueeze(2)


def _conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Causal depthwise conv of x (b, L, ch) with weight (ch, 1, K), before the activation -> (b, L, ch)."""
    K = weight.shape[-1]
    with torch.autocast(x.device.type, enabled=False):  # in x's dtype (at least fp32), as the docstring says
        y = F.conv2d(_as_image(x), weight.unsqueeze(2), bias, padding=(0, K - 1), groups=x.shape[-1])
    return y.squeeze(2).transpose(1, 2)[:, :x.shape[1]]  # output t sees inputs t - K + 1 .. t


def _row_blocks(x: torch.Tensor) -> list[tuple[int, int]]:
    """Ranges over dim 1 of (b, L, C) of about ROW_BLOCK elements on CPU (one range elsewhere)."""
    L = x.shape[1]
    rows = L if x.device.type != "cpu" else max(1, ROW_BLOCK // (x.shape[0] * x.shape[2]))
    return [(t0, min(t0 + rows, L)) for t0 in range(0, L, rows)]


class RMSNormGated(nn.Module):
    """mamba_ssm's gated RMSNorm (`ops.triton.layernorm_gated.RMSNorm`), computed in fp32.

    norm_before_gate=False (Mamba2's default): rmsnorm(x * silu(z)) * weight, per group of
    `group_size` channels. norm_before_gate=True: rmsnorm(x) * weight * silu(z).
    """

    def __init__(self, hidden_size: int, eps: float = 1e-5, group_size: int | None = None,
                 norm_before_gate: bool = True, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.group_size = group_size or hidden_size
        self.norm_before_gate = norm_before_gate
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        dtype = x.dtype
        ct = torch.promote_types(dtype, torch.float32)  # at least fp32
        x = x.to(ct)
        if z is not None and not self.norm_before_gate:
            x = x * F.silu(z.to(ct))
        xg = x.unflatten(-1, (-1, self.group_size))
        x = (xg * torch.rsqrt(xg.square().mean(-1, keepdim=True) + self.eps)).flatten(-2) * self.weight.to(ct)
        if z is not None and self.norm_before_gate:
            x = x * F.silu(z.to(ct))
        return x.to(dtype)


class _GatedNorm(torch.autograd.Function):
    """rmsnorm(y * silu(z)) * weight per group (Mamba2's gated norm, norm_before_gate=False), block by
    block over rows with a hand-written backward.

    As separate ops each step was a pass over memory (and autograd's backward twice as many); per
    block of rows they run in cache, and the backward recomputes the cheap products instead of
    keeping them. fp32 on CPU runs the C loops of cpu_kernels instead, one pass per row.
    y, z: (b, L, d); weight: (d,).
    """

    @staticmethod
    def forward(ctx, y, z, weight, eps, group_size):
        ctx.group_size = group_size
        ctx.fused = cpu_kernels.applies(y, z, weight)
        if ctx.fused:  # all of it in one pass per row, in C
            y, z = y.contiguous(), z.contiguous()
            out, r = cpu_kernels.gated_norm_forward(y, z, weight, eps, group_size)
            ctx.save_for_backward(y, z, weight, r)
            return out
        b, L, d = y.shape
        gv = (b, -1, d // group_size, group_size)
        w = weight.to(y.dtype).view(gv[2:])
        r = y.new_empty(b, L, d // group_size, 1)  # 1 / rms per group
        out = torch.empty_like(y)
        for t0, t1 in _row_blocks(y):
            v = (y[:, t0:t1] * F.silu(z[:, t0:t1].to(y.dtype))).view(gv)
            rb = torch.rsqrt(torch.linalg.vecdot(v, v)[..., None].div_(group_size).add_(eps), out=r[:, t0:t1])
            torch.mul(v, rb, out=out[:, t0:t1].view(gv)).mul_(w)
        ctx.save_for_backward(y, z, weight, r)
        return out

    @staticmethod
    def backward(ctx, grad):
        y, z, weight, r = ctx.saved_tensors
        if ctx.fused:
            return *cpu_kernels.gated_norm_backward(y, z, weight, r, grad, ctx.group_size), None, None
        b, L, d = y.shape
        gs = ctx.group_size
        gv_shape = (b, -1, d // gs, gs)
        w = weight.to(y.dtype).view(gv_shape[2:])
        gy, gz = torch.empty_like(y), torch.empty_like(y)
        gw = y.new_zeros(d)
        for t0, t1 in _row_blocks(y):
            zb, rb, u = z[:, t0:t1].to(y.dtype), r[:, t0:t1], y[:, t0:t1]
            sz = F.silu(zb)
            v = (u * sz).view(gv_shape)
            g = grad[:, t0:t1].to(y.dtype).view(gv_shape)
            q = g * v
            gw += (q * rb).sum((0, 1)).flatten()
            # out = v r w with r = (mean(v^2) + eps)^-1/2: dv = r w dout - v r^3 mean(w dout v)
            coef = torch.linalg.vecdot(q, w)[..., None].mul_(rb.pow(3)).div_(-gs)
            dv = (g * w).mul_(rb).addcmul_(v, coef).view(u.shape)
            torch.mul(dv, sz, out=gy[:, t0:t1])
            torch.ops.aten.silu_backward.grad_input(dv.mul_(u), zb, grad_input=gz[:, t0:t1])
        return gy, gz.to(z.dtype), gw.to(weight.dtype), None, None


@functools.cache
def _cuda_kernels() -> SimpleNamespace | None:
    """mamba_ssm's fused ops, imported on first use with a CUDA tensor (never on CPU machines)."""
    try:
        from mamba_ssm.ops.triton.ssd_combined import (
            mamba_chunk_scan_combined,
            mamba_split_conv1d_scan_combined,
        )
    except Exception:  # noqa: BLE001 - not installed, or without its CUDA extension / triton driver
        return None
    try:  # the fully fused op runs causal-conv1d's CUDA kernel; without it only the scan is fused
        import causal_conv1d  # noqa: F401
    except Exception:  # noqa: BLE001
        mamba_split_conv1d_scan_combined = None
    return SimpleNamespace(chunk_scan=mamba_chunk_scan_combined, split_conv1d_scan=mamba_split_conv1d_scan_combined)


class Mamba2(nn.Module):
    """(b, L, d_model) -> (b, L, d_model). Arguments as mamba_ssm's Mamba2, without tensor parallelism.

    use_kernels=False forces the pure-PyTorch path even where mamba_ssm's CUDA kernels are available.
    """

    def __init__(self, d_model: int, d_state: int = 128, d_conv: int = 4, conv_init: float | None = None,
                 expand: int = 2, headdim: int = 64, d_ssm: int | None = None, ngroups: int = 1,
                 A_init_range: tuple[float, float] = (1, 16), D_has_hdim: bool = False, rmsnorm: bool = True,
                 norm_before_gate: bool = False, dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, dt_limit: tuple[float, float] = (0.0, float("inf")),
                 bias: bool = False, conv_bias: bool = True, chunk_size: int = 256, use_mem_eff_path: bool = True,
                 layer_idx: int | None = None, use_kernels: bool = True, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = expand * d_model
        self.headdim = headdim
        self.d_ssm = self.d_inner if d_ssm is None else d_ssm
        if self.d_ssm % headdim or self.d_ssm > self.d_inner:
            raise ValueError(f"Mamba2: d_ssm={self.d_ssm} must be a multiple of headdim={headdim} "
                             f"and at most expand*d_model={self.d_inner}")
        self.nheads = self.d_ssm // headdim
        if self.nheads % ngroups:
            raise ValueError(f"Mamba2: ngroups={ngroups} must divide the number of heads {self.nheads}")
        self.ngroups = ngroups
        self.D_has_hdim, self.rmsnorm, self.norm_before_gate = D_has_hdim, rmsnorm, norm_before_gate
        self.dt_limit = tuple(dt_limit)
        self.activation = "silu"
        self.chunk_size = chunk_size
        self.use_mem_eff_path = use_mem_eff_path
        self.layer_idx = layer_idx
        self.use_kernels = use_kernels

        # Created in mamba_ssm's order, so that under the same seed the random init is the same.
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner + 2 * ngroups * d_state + self.nheads, bias=bias, **factory)
        conv_dim = self.d_ssm + 2 * ngroups * d_state
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, d_conv, groups=conv_dim, padding=d_conv - 1, bias=conv_bias,
                                **factory)
        if conv_init is not None:
            nn.init.uniform_(self.conv1d.weight, -conv_init, conv_init)
        # dt_bias = softplus^-1(dt) so that at init softplus(0 + dt_bias) = dt
        dt = torch.exp(torch.rand(self.nheads, **factory) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        A = torch.empty(self.nheads, dtype=torch.float32, device=device).uniform_(*A_init_range)
        self.A_log = nn.Parameter(torch.log(A).to(dtype=dtype))
        self.D = nn.Parameter(torch.ones(self.d_ssm if D_has_hdim else self.nheads, device=device))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True  # read by optimizer parameter grouping, as in mamba_ssm
        if rmsnorm:
            self.norm = RMSNormGated(self.d_ssm, eps=1e-5, norm_before_gate=norm_before_gate,
                                     group_size=self.d_ssm // ngroups, **factory)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    def _D(self) -> torch.Tensor:
        return self.D.view(self.nheads, self.headdim) if self.D_has_hdim else self.D

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        kernels = _cuda_kernels() if self.use_kernels and u.is_cuda else None
        A = -torch.exp(self.A_log.float())
        dt_limit = {} if self.dt_limit == (0.0, float("inf")) else {"dt_limit": self.dt_limit}
        gn = self.ngroups * self.d_state
        d_mlp = self.d_inner - self.d_ssm
        sizes = [d_mlp, d_mlp, self.d_ssm, self.d_ssm + 2 * gn, self.nheads]
        if kernels is not None and kernels.split_conv1d_scan is not None and self.use_mem_eff_path:
            return kernels.split_conv1d_scan(
                self.in_proj(u), self.conv1d.weight.squeeze(1), self.conv1d.bias, self.dt_bias, A,
                D=self._D(),
                chunk_size=self.chunk_size, activation=self.activation,
                rmsnorm_weight=self.norm.weight if self.rmsnorm else None,
                rmsnorm_eps=self.norm.eps if self.rmsnorm else 1e-6,
                outproj_weight=self.out_proj.weight, outproj_bias=self.out_proj.bias,
                headdim=None if self.D_has_hdim else self.headdim, ngroups=self.ngroups,
                norm_before_gate=self.norm_before_gate, **dt_limit)

        z0, x0, z, xBC, dt = self._in_projections(u, sizes)
        x, B, C = CausalConv1dSiLU.apply(xBC, self.conv1d.weight, self.conv1d.bias, [self.d_ssm, gn, gn])
        x = x.unflatten(-1, (self.nheads, self.headdim))
        B, C = B.unflatten(-1, (self.ngroups, self.d_state)), C.unflatten(-1, (self.ngroups, self.d_state))
        if kernels is not None:
            y = kernels.chunk_scan(x, dt, A, B, C, chunk_size=self.chunk_size, D=self._D(),
                                   z=None if self.rmsnorm else z.unflatten(-1, (self.nheads, self.headdim)),
                                   dt_bias=self.dt_bias, dt_softplus=True, **dt_limit).flatten(-2)
            y = self.norm(y, z) if self.rmsnorm else y
        else:
            y = self._torch_ssm(x, dt, B, C, z)
        y = y.to(u.dtype)
        if d_mlp > 0:
            y = torch.cat([F.silu(z0) * x0, y], dim=-1)
        if type(self.out_proj) is nn.Linear:
            return linear(y, self.out_proj.weight, self.out_proj.bias)
        return self.out_proj(y)  # a wrapped layer (LoRA) computes its own output

    def _in_projections(self, u: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
        """in_proj(u) split into [z0, x0, z, xBC, dt].

        A plain Linear runs as one matmul per piece: no (b, L, 772) output whose gradient a cat has to
        assemble from the pieces' (a pass over it), and products 256 and 512 wide ran faster than 772.
        A wrapped one (LoRA) computes its whole output, then that is split.
        """
        if type(self.in_proj) is not nn.Linear:
            return list(self.in_proj(u).split(sizes, dim=-1))
        return split_linear(u, self.in_proj.weight, self.in_proj.bias, sizes)

    def _torch_ssm(self, x, dt, B, C, z) -> torch.Tensor:
        """The scan, D skip and gate (and norm) in PyTorch -> (b, L, d_ssm).

        The scan runs in fp32 whatever the input dtype, as mamba_ssm's kernels do inside: in bf16 the
        running sum of dt*A over a chunk (values up to hundreds) keeps ~3 significant digits, a large
        relative error once exponentiated, and the state accumulates over the whole sequence.
        Autocast is switched off too, or it would run the matmuls in bf16 anyway.
        """
        ct = torch.promote_types(x.dtype, torch.float32)  # fp32, or fp64 for fp64 inputs
        with torch.autocast(x.device.type, enabled=False):
            dt = F.softplus(dt.to(ct) + self.dt_bias.to(ct))
            if self.dt_limit != (0.0, float("inf")):
                dt = dt.clamp(*self.dt_limit)
            y = ssd_chunked(x.to(ct), dt, -torch.exp(self.A_log.to(ct)), B.to(ct), C.to(ct),
                            min(self.chunk_size, TORCH_SCAN_CHUNK), D=self._D().to(ct)).flatten(-2)
            if self.rmsnorm and not self.norm_before_gate:  # Mamba2's default
                return _GatedNorm.apply(y, z, self.norm.weight, self.norm.eps, self.norm.group_size)
            return self.norm(y, z) if self.rmsnorm else y * F.silu(z.to(ct))
