"""longvid's pure-PyTorch Mamba2 against the SSM recurrence, transformers' Mamba2Mixer and mamba_ssm.

transformers' mixer (its torch path, which is what runs on CPU) uses the same parameter names, so
weights are copied with load_state_dict. Conventions checked to be the same for this comparison:
transformers always gates before the norm (mamba_ssm's norm_before_gate=False, our default), groups
the norm by intermediate_size // n_groups (= d_ssm // ngroups), takes its eps from
layer_norm_epsilon (set to mamba_ssm's 1e-5; transformers' default n_groups=8 is overridden too) and
clamps dt to time_step_limit, whose default (0, inf) is mamba_ssm's dt_limit default. Its gated norm
multiplies by the weight after casting back to the input dtype, mamba_ssm's before: the same in fp32.
It cannot express d_ssm < d_inner, rmsnorm=False or norm_before_gate=True; those variants are bound
to `reference_mixer` below, which spells out mamba_ssm's forward with the step-by-step recurrence.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import longvid.models.mamba2 as lv_mamba2
from longvid.models.mamba2 import Mamba2, RMSNormGated
from longvid.models.ssd import ssd_chunked, ssd_reference


def randomize(model: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> torch.nn.Module:
    """Perturb every parameter (norm weight, D, conv bias too) so no term hides behind its init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g).to(p) * scale)
    return model


def scan_inputs(L: int, ngroups: int, dtype=torch.float64, b: int = 2, h: int = 4, p: int = 8, n: int = 6):
    g = torch.Generator().manual_seed(L * 10 + ngroups)
    x = torch.randn(b, L, h, p, generator=g, dtype=dtype)
    dt = torch.rand(b, L, h, generator=g, dtype=dtype) * 0.5
    A = -(torch.rand(h, generator=g, dtype=dtype) * 4 + 0.5)
    B = torch.randn(b, L, ngroups, n, generator=g, dtype=dtype)
    C = torch.randn(b, L, ngroups, n, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (x, dt, A, B, C)]


@pytest.mark.parametrize("ngroups", [1, 2])
@pytest.mark.parametrize("L", [1, 5, 16, 32, 37])
def test_chunked_scan_equals_recurrence(L, ngroups):
    """Chunk 16: shorter than, equal to, a multiple of, and not a multiple of the chunk."""
    args = scan_inputs(L, ngroups)
    y_ref, state_ref = ssd_reference(*args, return_final_state=True)
    y, state = ssd_chunked(*args, chunk_size=16, return_final_state=True)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(state, state_ref, rtol=0, atol=1e-10)  # padded steps left it untouched
    w, v = torch.randn_like(y), torch.randn_like(state)
    g_ref = torch.autograd.grad((y_ref * w).sum() + (state_ref * v).sum(), args)
    g = torch.autograd.grad((y * w).sum() + (state * v).sum(), args)
    for name, a, b in zip(["x", "dt", "A", "B", "C"], g, g_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9, msg=f"grad {name}")


def test_gradient_of_the_final_state_alone():
    """Only the state used (no gradient reaches y): the scan's backward without an output gradient."""
    args = scan_inputs(37, 2)
    v = torch.randn(2, 4, 8, 6, dtype=torch.float64)
    g_ref = torch.autograd.grad((ssd_reference(*args, return_final_state=True)[1] * v).sum(), args,
                                materialize_grads=True)  # C only reaches y
    g = torch.autograd.grad((ssd_chunked(*args, chunk_size=16, return_final_state=True)[1] * v).sum(), args)
    for name, a, b in zip(["x", "dt", "A", "B", "C"], g, g_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9, msg=f"grad {name}")


def test_result_does_not_depend_on_chunk_size():
    """Chunks of 4, 7, 16, 37 (one chunk) and 64 (longer than L) all give the same y and final state."""
    args = [a.detach() for a in scan_inputs(37, 2)]
    outs = [ssd_chunked(*args, chunk_size=cs, return_final_state=True) for cs in (4, 7, 16, 37, 64)]
    for y, state in outs[1:]:
        torch.testing.assert_close(y, outs[0][0], rtol=0, atol=1e-10)
        torch.testing.assert_close(state, outs[0][1], rtol=0, atol=1e-10)


def test_state_dict_is_mamba_ssm_layout():
    """Keys, order and shapes of mamba_ssm.modules.mamba2.Mamba2 (setup-facts §3)."""
    d_model, d_state, headdim, ngroups, d_conv = 64, 16, 16, 2, 4
    d_inner = 2 * d_model
    nheads = d_inner // headdim
    m = Mamba2(d_model, d_state=d_state, headdim=headdim, ngroups=ngroups, d_conv=d_conv)
    conv_dim = d_inner + 2 * ngroups * d_state
    expected = {
        "dt_bias": (nheads,), "A_log": (nheads,), "D": (nheads,),
        "in_proj.weight": (2 * d_inner + 2 * ngroups * d_state + nheads, d_model),
        "conv1d.weight": (conv_dim, 1, d_conv), "conv1d.bias": (conv_dim,),
        "norm.weight": (d_inner,), "out_proj.weight": (d_model, d_inner),
    }
    assert [(k, tuple(v.shape)) for k, v in m.state_dict().items()] == list(expected.items())

    m = Mamba2(d_model, d_state=d_state, headdim=headdim, d_ssm=64, D_has_hdim=True, bias=True, rmsnorm=False)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {"dt_bias": (4,), "A_log": (4,), "D": (64,), "in_proj.weight": (2 * d_inner + 2 * d_state + 4, 64),
                      "in_proj.bias": (2 * d_inner + 2 * d_state + 4,), "conv1d.weight": (64 + 2 * d_state, 1, 4),
                      "conv1d.bias": (64 + 2 * d_state,), "out_proj.weight": (64, d_inner), "out_proj.bias": (64,)}


def test_init_follows_mamba_ssm():
    m = Mamba2(256, d_state=16, headdim=8, dt_min=0.002, dt_max=0.05, A_init_range=(2, 8))
    dt = F.softplus(m.dt_bias.detach())
    assert dt.min() >= 0.002 * (1 - 1e-5) and dt.max() <= 0.05 * (1 + 1e-5)
    A = m.A_log.detach().exp()
    assert A.min() >= 2 and A.max() <= 8 and A.std() > 0.5  # uniform, not a constant
    assert torch.equal(m.D.detach(), torch.ones(64)) and torch.equal(m.norm.weight.detach(), torch.ones(512))
    assert all(getattr(p, "_no_weight_decay", False) for p in (m.dt_bias, m.A_log, m.D))
    with pytest.raises(ValueError, match="ngroups=3"):
        Mamba2(64, headdim=16, ngroups=3)


def transformers_mixer(ours: Mamba2):
    from transformers import Mamba2Config
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

    cfg = Mamba2Config(hidden_size=ours.d_model, num_heads=ours.nheads, head_dim=ours.headdim,
                       state_size=ours.d_state, n_groups=ours.ngroups, expand=ours.expand, conv_kernel=ours.d_conv,
                       chunk_size=ours.chunk_size, use_conv_bias=True, use_bias=False, layer_norm_epsilon=1e-5,
                       num_hidden_layers=1, vocab_size=16)
    ref = Mamba2Mixer(cfg, layer_idx=0)
    ref.load_state_dict(ours.state_dict())  # strict: the names are the same
    return ref


def forward_and_grads(model: torch.nn.Module, x: torch.Tensor, w: torch.Tensor):
    x = x.clone().requires_grad_()
    model.zero_grad(set_to_none=True)
    y = model(x)
    (y * w).sum().backward()
    return y.detach(), x.grad, {k: p.grad for k, p in model.named_parameters()}


@pytest.mark.parametrize("ngroups", [1, 2])
@pytest.mark.parametrize("L", [7, 32, 37])
def test_parity_with_transformers(L, ngroups):
    torch.manual_seed(L + ngroups)
    ours = randomize(Mamba2(32, d_state=16, headdim=16, ngroups=ngroups, chunk_size=16, use_kernels=False))
    ref = transformers_mixer(ours)
    x, w = torch.randn(2, L, 32), torch.randn(2, L, 32)
    y, gx, gp = forward_and_grads(ours, x, w)
    y_ref, gx_ref, gp_ref = forward_and_grads(ref, x, w)
    assert y.abs().max() > 0.1
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(gx, gx_ref, rtol=0, atol=1e-5)
    assert gp.keys() == gp_ref.keys()
    for k in gp:
        # absolute 1e-5, scaled for gradients whose entries reach well above 1 (in_proj sums over b*L)
        scale = max(1.0, gp_ref[k].abs().max().item())
        torch.testing.assert_close(gp[k], gp_ref[k], rtol=0, atol=1e-5 * scale, msg=f"grad {k}")


def reference_mixer(m: Mamba2, u: torch.Tensor) -> torch.Tensor:
    """mamba_ssm's Mamba2 forward (use_mem_eff_path=False) written out with the plain recurrence."""
    L = u.shape[1]
    zxbcdt = F.linear(u, m.in_proj.weight, m.in_proj.bias)
    gn = m.ngroups * m.d_state
    d_mlp = (zxbcdt.shape[-1] - 2 * m.d_ssm - 2 * gn - m.nheads) // 2
    z0, x0, z, xBC, dt = torch.split(zxbcdt, [d_mlp, d_mlp, m.d_ssm, m.d_ssm + 2 * gn, m.nheads], dim=-1)
    xBC = F.silu(F.conv1d(xBC.transpose(1, 2), m.conv1d.weight, m.conv1d.bias, padding=m.d_conv - 1,
                          groups=xBC.shape[-1])[..., :L].transpose(1, 2))
    x, B, C = torch.split(xBC, [m.d_ssm, gn, gn], dim=-1)
    dt = F.softplus(dt + m.dt_bias).clamp(*m.dt_limit)
    x = x.unflatten(-1, (m.nheads, m.headdim))
    y = ssd_reference(x, dt, -torch.exp(m.A_log), B.unflatten(-1, (m.ngroups, m.d_state)),
                      C.unflatten(-1, (m.ngroups, m.d_state)))
    D = m.D.view(m.nheads, m.headdim) if m.D_has_hdim else m.D[:, None]
    y = (y + x * D).flatten(-2)
    if not m.rmsnorm:
        y = y * F.silu(z)
    else:
        if not m.norm_before_gate:
            y = y * F.silu(z)
        yg = y.unflatten(-1, (m.ngroups, -1))
        y = (yg / torch.sqrt(yg.pow(2).mean(-1, keepdim=True) + 1e-5)).flatten(-2) * m.norm.weight
        if m.norm_before_gate:
            y = y * F.silu(z)
    y = torch.cat([F.silu(z0) * x0, y], dim=-1)
    return F.linear(y, m.out_proj.weight, m.out_proj.bias)


OPTIONS = [
    {},
    {"ngroups": 2, "norm_before_gate": True},
    {"rmsnorm": False, "D_has_hdim": True},
    {"d_ssm": 32, "bias": True},  # gated-MLP channels beside the SSM ones
    {"dt_limit": (0.02, 0.2), "conv_bias": False},
]


@pytest.mark.parametrize("variant", OPTIONS)
def test_options_match_reference_mixer(variant):
    torch.manual_seed(0)
    m = randomize(Mamba2(32, d_state=8, headdim=8, chunk_size=8, use_kernels=False, **variant).double())
    u = torch.randn(2, 19, 32, dtype=torch.float64)
    torch.testing.assert_close(m(u), reference_mixer(m, u), rtol=0, atol=1e-10)


@pytest.mark.parametrize("variant", OPTIONS)
def test_option_gradients_match_reference_mixer(variant):
    """The hand-written backwards (conv, scan, skip + gated norm) against autograd through the recurrence."""
    torch.manual_seed(0)
    m = randomize(Mamba2(32, d_state=8, headdim=8, chunk_size=8, use_kernels=False, **variant).double())
    u = torch.randn(2, 19, 32, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 19, 32, dtype=torch.float64)
    names, params = zip(*[("u", u), *m.named_parameters()])
    got = torch.autograd.grad((m(u) * w).sum(), params)
    want = torch.autograd.grad((reference_mixer(m, u) * w).sum(), params)
    for name, a, b in zip(names, got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10, msg=f"grad {name}")


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("block", [1, 40, 1 << 18])  # elements per block: 1 row, a few rows, one block
def test_causal_conv_in_row_blocks(monkeypatch, block, bias):
    """The depthwise conv + silu (weight gradient in blocks) against nn.Conv1d, outputs and gradients,
    whatever the block."""
    monkeypatch.setattr(lv_mamba2, "ROW_BLOCK", block)
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(5, 5, 4, groups=5, padding=3, bias=bias).double()
    src = torch.randn(2, 11, 7, dtype=torch.float64, requires_grad=True)
    x = src[..., 1:6]  # strided, as a slice of in_proj's output
    ref = F.silu(conv(x.transpose(1, 2))[..., :11].transpose(1, 2))
    outs = lv_mamba2.CausalConv1dSiLU.apply(x, conv.weight, conv.bias, [2, 1, 2])
    torch.testing.assert_close(torch.cat(outs, -1), ref, rtol=0, atol=1e-12)
    w = [torch.randn_like(o) for o in outs]
    params = [src, *conv.parameters()]
    got = torch.autograd.grad(sum((o * wi).sum() for o, wi in zip(outs, w)), params)
    want = torch.autograd.grad((ref * torch.cat(w, -1)).sum(), params)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_causal_conv_stays_in_fp32_under_autocast():
    """bf16 autocast must not reach the conv inside the Function: the conv runs in at least fp32."""
    torch.manual_seed(0)
    x, w, b = torch.randn(1, 50, 12), torch.randn(12, 1, 4), torch.randn(12)
    want = lv_mamba2.CausalConv1dSiLU.apply(x, w, b, [4, 4, 4])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = lv_mamba2.CausalConv1dSiLU.apply(x, w, b, [4, 4, 4])
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=0, atol=0)


def test_row_blocks_do_not_change_the_mixer(monkeypatch):
    """Conv and gated norm in blocks of one row give the one-block mixer's output and gradients."""
    torch.manual_seed(0)
    m = randomize(Mamba2(32, d_state=8, headdim=8, ngroups=2, chunk_size=8, use_kernels=False).double())
    u, w = torch.randn(2, 19, 32, dtype=torch.float64), torch.randn(2, 19, 32, dtype=torch.float64)
    want = forward_and_grads(m, u, w)
    monkeypatch.setattr(lv_mamba2, "ROW_BLOCK", 1)
    got = forward_and_grads(m, u, w)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=1e-12)
    for k in want[2]:
        torch.testing.assert_close(got[2][k], want[2][k], rtol=0, atol=1e-11, msg=f"grad {k}")


def test_gated_mlp_channels_come_first():
    """With d_ssm < d_inner, out_proj's first d_inner - d_ssm inputs are silu(z0) * x0 (mamba_ssm's order)."""
    m = randomize(Mamba2(16, d_state=8, headdim=8, d_ssm=16, chunk_size=8))
    d_mlp = m.d_inner - m.d_ssm
    with torch.no_grad():
        m.out_proj.weight[:, d_mlp:] = 0
    u = torch.randn(1, 5, 16)
    z0, x0 = F.linear(u, m.in_proj.weight)[..., :2 * d_mlp].split(d_mlp, dim=-1)
    torch.testing.assert_close(m(u), F.linear(F.silu(z0) * x0, m.out_proj.weight[:, :d_mlp]))


def test_bf16_runs_the_scan_in_fp32():
    """bf16 weights and input, and fp32 under bf16 autocast, both stay close to the fp32 result."""
    torch.manual_seed(0)
    m = randomize(Mamba2(32, d_state=16, headdim=16, chunk_size=16, use_kernels=False))
    u = torch.randn(2, 40, 32)
    y32 = m(u)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_auto = m(u)
    y16 = m.to(torch.bfloat16)(u.bfloat16())
    assert y16.dtype == torch.bfloat16
    for y in (y_auto, y16):
        assert ((y.float() - y32).norm() / y32.norm()).item() < 2e-2


def test_gated_norm_groups():
    norm = RMSNormGated(8, group_size=4, norm_before_gate=False)
    x, z = torch.randn(3, 8), torch.randn(3, 8)
    out = norm(x, z)
    gated = (x * F.silu(z)).view(3, 2, 4)
    torch.testing.assert_close(out.view(3, 2, 4), gated * torch.rsqrt(gated.pow(2).mean(-1, keepdim=True) + 1e-5))


@pytest.mark.parametrize("ngroups", [1, 2])
@pytest.mark.parametrize("L", [300, 512])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (mamba_ssm's kernels are CUDA-only)")
def test_reference_path_matches_mamba_ssm_kernels(L, ngroups):
    """Our pure-PyTorch path against mamba_ssm's own Mamba2 (fused kernels), same weights, on CUDA."""
    mamba2 = pytest.importorskip("mamba_ssm.modules.mamba2", reason="mamba_ssm with its CUDA kernels not installed")
    dev = torch.device("cuda")
    kw = {"d_state": 64, "headdim": 32, "ngroups": ngroups, "chunk_size": 128}
    torch.manual_seed(0)
    theirs = mamba2.Mamba2(128, **kw, device=dev)
    torch.manual_seed(0)
    ours = Mamba2(128, **kw, device=dev)
    # constructed in mamba_ssm's order, the same seed gives the same init
    for (k, a), (k2, b) in zip(ours.state_dict().items(), theirs.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), f"same seed, different init or order: {k} vs {k2}"
    randomize(ours)
    theirs.load_state_dict(ours.state_dict())
    x, w = torch.randn(2, L, 128, device=dev), torch.randn(2, L, 128, device=dev)
    y_ref, gx_ref, gp_ref = forward_and_grads(theirs, x, w)
    for use_kernels in (False, True):
        ours.use_kernels = use_kernels
        y, gx, gp = forward_and_grads(ours, x, w)
        # the Triton kernels may use TF32 matmuls: compare relative to each tensor's size
        for name, a, b in [("y", y, y_ref), ("x.grad", gx, gx_ref)] + [(k, gp[k], gp_ref[k]) for k in gp]:
            err = ((a - b).norm() / b.norm()).item()
            assert err < 5e-3, f"use_kernels={use_kernels}: {name} relative error {err:.2e}"
