"""The fused C loops (Mamba2's scan, conv and norms, the scan blocks' norm and gated residual, the MLP's
GELU) against the PyTorch code they replace (fp32)."""

import warnings

import pytest
import torch

from longvid.models import cpu_kernels
from longvid.models.mamba2 import CausalConv1dSiLU, Mamba2, _GatedNorm
from longvid.models.fast_gelu import gelu_tanh
from longvid.models.scan_order import gated_residual, scan_norm
from longvid.models.ssd import ssd_chunked

pytestmark = pytest.mark.skipif(cpu_kernels.library() is None, reason="no C compiler to build the loops with")


def _both(fn, monkeypatch, *inputs):
    """fn's outputs and the gradients of sum(outputs * fixed weights), with the C loops then without."""
    results = []
    for fused in (True, False):
        monkeypatch.setattr(cpu_kernels, "applies", cpu_kernels.applies if fused else lambda *t: False)
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        outs = fn(*leaves)
        outs = outs if isinstance(outs, tuple) else (outs,)
        torch.manual_seed(1)
        sum((o * torch.randn_like(o)).sum() for o in outs).backward()
        results.append(([o.detach() for o in outs], [t.grad for t in leaves]))
    monkeypatch.undo()
    return results


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("b, L, with_bias, taps, sizes", [
    (1, 700, True, 4, [32, 16, 16]), (2, 3, True, 4, [32, 16, 16]), (2, 515, False, 4, [32, 16, 16]),
    (1, 600, True, 3, [5, 3, 3]), (2, 2, False, 2, [7, 1, 2])])
def test_conv_matches_pytorch(monkeypatch, threads, b, L, with_bias, taps, sizes):
    """Several threads split the steps (515 rows and more go to two), including sequences shorter than the
    kernel; the pieces' gradients and the weight and bias gradients cross the split boundaries. Mamba2's
    4 taps run in their own unrolled copy of the loops, other kernel sizes in the general one; channel
    counts off the vector width leave remainders."""
    torch.manual_seed(0)
    x, w = torch.randn(b, L, sum(sizes)), torch.randn(sum(sizes), 1, taps) * 0.5
    bias = torch.randn(sum(sizes)) if with_bias else None
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if with_bias:
            got, want = _both(lambda x, w, bias: CausalConv1dSiLU.apply(x, w, bias, sizes), monkeypatch,
                              x, w, bias)
        else:
            got, want = _both(lambda x, w: CausalConv1dSiLU.apply(x, w, None, sizes), monkeypatch, x, w)
    finally:
        torch.set_num_threads(previous)
    for a, e in zip(got[0] + got[1], want[0] + want[1]):
        assert a.shape == e.shape
        torch.testing.assert_close(a, e, rtol=1e-4, atol=5e-5)  # weight and bias: sums over ~1000 rows


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("group_size", [64, 16])
def test_gated_norm_matches_pytorch(monkeypatch, threads, group_size):
    torch.manual_seed(0)
    b, L, d = 2, 300, 64
    y, z = (torch.randn(b, L, d) for _ in range(2))
    weight = torch.rand(d) + 0.5
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got, want = _both(lambda *t: _GatedNorm.apply(*t, 1e-5, group_size), monkeypatch, y, z, weight)
    finally:
        torch.set_num_threads(previous)
    for a, e in zip(got[0] + got[1], want[0] + want[1]):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("keep, reverse", [(0, False), (7, True), (0, True)])
def test_scan_norm_and_gated_residual_match_pytorch(monkeypatch, threads, keep, reverse):
    """A scan block's input norm (rows read in scan order) and gated residual (the scan's output read back
    in token order) against LayerNorm and addcmul around the reordering copy; 2 x 300 rows split over
    threads across the batch boundary."""
    torch.manual_seed(0)
    b, N, d = 2, 300, 48
    norm = torch.nn.LayerNorm(d)
    del norm.weight, norm.bias  # set per run to _both's leaves, so that their gradients are compared
    h, m, x = (torch.randn(b, N, d) for _ in range(3))
    alpha = torch.randn(d)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        def normed(x, w, bias):
            norm.weight, norm.bias = w, bias
            return scan_norm(x * 3 + 1, norm, keep, reverse)  # an offset and scale for the norm to remove
        got, want = _both(normed, monkeypatch, x, torch.rand(d) + 0.5, torch.randn(d))
        for a, e in zip(got[0] + got[1], want[0] + want[1]):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=3e-5)  # weight, bias: sums over 600 rows
        got, want = _both(lambda h, a, m: gated_residual(h, a, m, keep, reverse), monkeypatch, h, alpha, m)
        for a, e in zip(got[0] + got[1], want[0] + want[1]):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=3e-5)
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("threads", [1, 2])
def test_gelu_matches_pytorch(monkeypatch, threads):
    """The MLP's tanh GELU: values and input gradient against F.gelu, over the range where its two
    branches matter (x from -12 to 12) and rows split over threads; NaN stays NaN."""
    torch.manual_seed(0)
    x = torch.cat([torch.linspace(-12, 12, 3001), torch.randn(600 * 7 - 3001) * 3]).view(7, 600)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got, want = _both(gelu_tanh, monkeypatch, x)
        nan = gelu_tanh(torch.tensor([float("nan"), 1.0]))
    finally:
        torch.set_num_threads(previous)
    for a, e in zip(got[0] + got[1], want[0] + want[1]):
        # below x ~ -5 PyTorch's 1 + tanh(u) rounds to 0 where x sigmoid(2u) keeps a tail under 2e-6
        torch.testing.assert_close(a, e, rtol=1e-5, atol=2e-6)
    assert nan[0].isnan() and not nan[1].isnan()


def test_mixer_with_and_without_loops(monkeypatch):
    """The whole mixer (fp32): output and every parameter's gradient agree between the two paths."""
    torch.manual_seed(0)
    m = Mamba2(32, d_state=16, headdim=16, ngroups=2, chunk_size=8)
    u = torch.randn(2, 37, 32)
    grads = []
    for fused in (True, False):
        monkeypatch.setattr(cpu_kernels, "applies", cpu_kernels.applies if fused else lambda *t: False)
        m.zero_grad()
        y = m(u)
        y.square().mean().backward()
        grads.append((y.detach(), {k: p.grad.clone() for k, p in m.named_parameters()}))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-6)
    for k in grads[1][1]:
        torch.testing.assert_close(grads[0][1][k], grads[1][1][k], rtol=1e-4, atol=1e-6, msg=k)


def test_built_once_per_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = cpu_kernels._build("cc")
    stamp = first.stat().st_mtime_ns
    assert cpu_kernels._build("cc") == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "longvid").iterdir()] == [first.name]  # no temporary left behind


@pytest.mark.parametrize("cc, why", [("no-such-cc", "not found"),
                                     ("false", "building cpu_rows.c, cpu_scan.c with false")])
def test_without_a_compiler_pytorch_runs(tmp_path, monkeypatch, cc, why):
    """No compiler, or one that fails: one warning naming the reason, and the mixer runs as PyTorch ops."""
    monkeypatch.setenv("CC", cc)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cpu_kernels.library.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert cpu_kernels.library() is None
            assert not cpu_kernels.applies(torch.zeros(1))
            Mamba2(16, d_state=8, headdim=8)(torch.randn(1, 5, 16)).sum().backward()
        messages = [str(w.message) for w in caught]
        assert len(messages) == 1 and why in messages[0] and "PyTorch ops" in messages[0]
    finally:
        monkeypatch.undo()
        cpu_kernels.library.cache_clear()


def test_switched_off_by_environment(monkeypatch):
    monkeypatch.setenv("LONGVID_CPU_KERNELS", "0")
    cpu_kernels.library.cache_clear()
    try:
        assert cpu_kernels.library() is None
    finally:
        monkeypatch.undo()
        cpu_kernels.library.cache_clear()


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("b, L, h, g, chunk, p", [(1, 64, 4, 1, 16, 8), (2, 45, 4, 2, 16, 8),
                                                   (2, 300, 2, 1, 25, 32), (1, 200, 2, 1, 64, 64),
                                                   (2, 130, 4, 2, 50, 40), (1, 11, 2, 1, 16, 32),
                                                   (1, 40, 6, 2, 15, 32)])
@pytest.mark.parametrize("skip", [None, "per head", "per channel"])
def test_scan_matches_pytorch(monkeypatch, threads, b, L, h, g, chunk, p, skip):
    """The chunked scan in C: y, the final state and every input's gradient, for whole and padded last
    chunks, a sequence shorter than one chunk, groups of heads (3 per group split unevenly over 2
    threads), and chunk and head sizes that take the C products' register tiles (6 rows x 32 columns on
    AVX-512), every row remainder (chunks of 25, 50, 15, 16, 11: 1-5 rows left) and column remainder
    (40 = 32 + 8) or only the plain loops (8 wide), and the transposes' 8 x 8 blocks or their fallback
    (chunks of 25, 50, 15, 11); without Mamba2's skip term D x, and with D per head or per channel."""
    torch.manual_seed(0)
    n = 32  # the state size: the columns of the B and C gradients' products, one whole register tile
    x, B, C = torch.randn(b, L, h, p), torch.randn(b, L, g, n), torch.randn(b, L, g, n)
    dt, A = torch.rand(b, L, h) * 0.2 + 0.01, -torch.rand(h) * 4 - 0.5
    inputs = [x, dt, A, B, C] + ([] if skip is None else [torch.randn(h) if skip == "per head" else torch.randn(h, p)])
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got, want = _both(lambda x, dt, A, B, C, D=None: ssd_chunked(x, dt, A, B, C, chunk_size=chunk,
                                                                     return_final_state=True, D=D),
                          monkeypatch, *inputs)
    finally:
        torch.set_num_threads(previous)
    for a, e in zip(got[0] + got[1], want[0] + want[1]):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)
