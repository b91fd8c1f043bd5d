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
else (CPU machines, tests, `use_kernels=False`) it runs the chunked SSD scan below.

Shapes: b batch, L sequence, h heads, p head dim, g groups (heads share B and C within a group),
n state size, c chunks of l steps. Per head the scan is
    state_t = exp(dt_t * A) * state_{t-1} + dt_t * x_t B_t^T          y_t = state_t C_t (+ D * x_t)
`ssd_reference` writes that recurrence out step by step; `ssd_chunked` computes the same thing with
exact attention-like products inside each chunk and one state hand-over per chunk (Mamba2 paper §6).
"""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn


# The chunk only changes how the scan is computed, never its result. The kernels want 256; in PyTorch
# the work inside chunks grows with the chunk (O(L * chunk * (d_state + headdim))) while the chunk
# hand-overs are few and cheap, and 64 measured fastest (2.4x faster than 256 on CPU at the seed's
# d_state 128, forward + backward over 9.5k tokens).
TORCH_SCAN_CHUNK = 64


def ssd_reference(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                  return_final_state: bool = False):
    """The SSM recurrence one step at a time (slow; the definition the chunked scan must match).

    x (b,L,h,p), dt (b,L,h) positive steps, A (h,) negative, B and C (b,L,g,n) -> y (b,L,h,p),
    without the D skip term; and the last state (b,h,p,n) if asked.
    """
    b, L, h, p = x.shape
    heads_per_group = h // B.shape[2]
    B = B.repeat_interleave(heads_per_group, dim=2)
    C = C.repeat_interleave(heads_per_group, dim=2)
    state = x.new_zeros(b, h, p, B.shape[-1])
    ys = []
    for t in range(L):
        decay = torch.exp(dt[:, t] * A)[..., None, None]
        state = decay * state + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", state, C[:, t]))
    y = torch.stack(ys, dim=1)
    return (y, state) if return_final_state else y


def ssd_chunked(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                chunk_size: int, return_final_state: bool = False):
    """Chunked SSD scan: same arguments and results as `ssd_reference`, O(L * chunk_size) work.

    Any L works: the tail is padded to a whole chunk and cut off again. Padded steps come after all
    real ones, so causality keeps them out of y; dt = 0 makes them no-ops (decay exp(0) = 1, input
    dt * x = 0) so that the final state is exact too.
    """
    b, L, h, p = x.shape
    g, n = B.shape[-2:]
    hg = h // g
    l = min(chunk_size, L)
    pad = -L % l
    if pad:
        x, dt, B, C = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, dt, B, C))
    c = (L + pad) // l

    # heads split as (group, head in group): B and C are used per group, never copied per head
    xdt = (x * dt[..., None]).view(b, c, l, g, hg, p).permute(0, 1, 3, 4, 2, 5)  # (b,c,g,hg,l,p)
    Bt = B.view(b, c, l, g, n).transpose(2, 3)  # (b,c,g,l,n)
    Ct = C.view(b, c, l, g, n).transpose(2, 3)
    # log-decay from the chunk start through step l, (b,c,g,hg,l). Decays between two steps are
    # differences of it, as in mamba_ssm's Triton kernels: cheaper than ssd_minimal's masked segment
    # sums, and in fp32 the cancellation error stays small for chunks of a few hundred steps.
    a_cum = (dt * A).view(b, c, l, g, hg).permute(0, 1, 3, 4, 2).cumsum(dim=-1)

    # 1. inside each chunk: y_l = sum_{s<=l} (C_l . B_s) exp(a_cum_l - a_cum_s) dt_s x_s.
    # The causal mask is added as -inf (exp -> 0); "+ (-a)" rather than "- a" and no masked_fill keep
    # the backward to a few passes over the (l, l) tensors, the most expensive ones here.
    upper = torch.full((l, l), -math.inf, dtype=a_cum.dtype, device=x.device).triu(1)
    decay = ((a_cum[..., :, None] + upper) + (-a_cum)[..., None, :]).exp()  # (b,c,g,hg,l,s)
    scores = Ct @ Bt.transpose(-1, -2)  # (b,c,g,l,s), once per group
    y = (scores[:, :, :, None] * decay) @ xdt  # (b,c,g,hg,l,p)

    # 2. each chunk's own contribution to the state at its end: (b,c,g,hg,p,n). The heads of a group
    # are stacked into one matrix (hg*p rows) rather than broadcasting B over them, which would copy it.
    decay_to_end = (a_cum[..., -1:] - a_cum).exp()[..., None]
    x_end = (xdt * decay_to_end).transpose(-1, -2).reshape(b, c, g, hg * p, l)
    chunk_states = (x_end @ Bt).view(b, c, g, hg, p, n)

    # 3. hand the state over from chunk to chunk (c = L / l steps). unbind rather than [:, k]: indexing
    # would make backward fill a zero gradient of the full size once per chunk.
    state = torch.zeros_like(chunk_states[:, 0])
    starts = []
    for decay_k, states_k in zip(a_cum[..., -1].exp()[..., None, None].unbind(1), chunk_states.unbind(1)):
        starts.append(state)
        state = decay_k * state + states_k
    starts = torch.stack(starts, dim=1)

    # 4. what the state at each chunk's start adds to its outputs (heads stacked again: (b,c,g,l,hg,p))
    y_start = (Ct @ starts.permute(0, 1, 2, 5, 3, 4).reshape(b, c, g, n, hg * p)).view(b, c, g, l, hg, p)
    y = y.transpose(3, 4) + y_start * a_cum.exp().transpose(3, 4)[..., None]  # (b,c,g,l,hg,p)
    y = y.transpose(2, 3).reshape(b, c * l, h, p)[:, :L]
    return (y, state.view(b, h, p, n)) if return_final_state else y


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
        zxbcdt = self.in_proj(u)
        A = -torch.exp(self.A_log.float())
        dt_limit = {} if self.dt_limit == (0.0, float("inf")) else {"dt_limit": self.dt_limit}
        if kernels is not None and kernels.split_conv1d_scan is not None and self.use_mem_eff_path:
            return kernels.split_conv1d_scan(
                zxbcdt, self.conv1d.weight.squeeze(1), self.conv1d.bias, self.dt_bias, A, D=self._D(),
                chunk_size=self.chunk_size, activation=self.activation,
                rmsnorm_weight=self.norm.weight if self.rmsnorm else None,
                rmsnorm_eps=self.norm.eps if self.rmsnorm else 1e-6,
                outproj_weight=self.out_proj.weight, outproj_bias=self.out_proj.bias,
                headdim=None if self.D_has_hdim else self.headdim, ngroups=self.ngroups,
                norm_before_gate=self.norm_before_gate, **dt_limit)

        L = u.shape[1]
        gn = self.ngroups * self.d_state
        d_mlp = self.d_inner - self.d_ssm
        z0, x0, z, xBC, dt = zxbcdt.split([d_mlp, d_mlp, self.d_ssm, self.d_ssm + 2 * gn, self.nheads], dim=-1)
        xBC = F.silu(self.conv1d(xBC.transpose(1, 2))[..., :L].transpose(1, 2))  # causal: keep the first L
        x, B, C = xBC.split([self.d_ssm, gn, gn], dim=-1)
        x = x.unflatten(-1, (self.nheads, self.headdim))
        B, C = B.unflatten(-1, (self.ngroups, self.d_state)), C.unflatten(-1, (self.ngroups, self.d_state))
        if kernels is not None:
            y = kernels.chunk_scan(x, dt, A, B, C, chunk_size=self.chunk_size, D=self._D(),
                                   z=None if self.rmsnorm else z.unflatten(-1, (self.nheads, self.headdim)),
                                   dt_bias=self.dt_bias, dt_softplus=True, **dt_limit)
        else:
            # The scan runs in fp32 whatever the input dtype, as mamba_ssm's kernels do inside: in bf16
            # the running sum of dt*A over a chunk (values up to hundreds) keeps ~3 significant digits,
            # a large relative error once exponentiated, and the state accumulates over the whole
            # sequence. Autocast is switched off too, or it would run the matmuls in bf16 anyway.
            ct = torch.promote_types(u.dtype, torch.float32)  # fp32, or fp64 for fp64 inputs
            with torch.autocast(u.device.type, enabled=False):
                dt = F.softplus(dt.to(ct) + self.dt_bias.to(ct))
                if dt_limit:
                    dt = dt.clamp(*self.dt_limit)
                x = x.to(ct)
                y = ssd_chunked(x, dt, -torch.exp(self.A_log.to(ct)), B.to(ct), C.to(ct),
                                min(self.chunk_size, TORCH_SCAN_CHUNK))
                D = self._D().to(ct)
                y = y + x * (D[:, None] if D.dim() == 1 else D)
                if not self.rmsnorm:
                    y = y * F.silu(z.to(ct).unflatten(-1, (self.nheads, self.headdim)))
        y = y.flatten(-2)
        if self.rmsnorm:
            y = self.norm(y, z)
        y = y.to(u.dtype)
        if d_mlp > 0:
            y = torch.cat([F.silu(z0) * x0, y], dim=-1)
        return self.out_proj(y)
