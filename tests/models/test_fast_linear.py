"""fast_linear: the oneDNN path and the split product give F.linear's values and gradients; the rest falls
back."""

import pytest
import torch
import torch.nn.functional as F

from longvid.models.fast_linear import _onednn_applies, linear, split_linear
from longvid.models.lora import LoRALinear
from longvid.models.mamba2 import Mamba2

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
def test_onednn_path_matches_f_linear_values_and_gradients(bias):
    torch.manual_seed(0)
    x = torch.randn(2, 2048, 96, requires_grad=True)
    w = torch.randn(160, 96, requires_grad=True)
    b = torch.randn(160, requires_grad=True) if bias else None
    assert _onednn_applies(x, w)  # large enough: the path under test is really taken
    g = torch.randn(2, 2048, 160)
    got = linear(x, w, b)
    got_grads = torch.autograd.grad(got, [x, w] + ([b] if bias else []), g)
    want = F.linear(x, w, b)
    want_grads = torch.autograd.grad(want, [x, w] + ([b] if bias else []), g)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    for a, e in zip(got_grads, want_grads):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-3)


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_split_linear_matches_f_linear_per_block(bias, dtype):
    """Mamba2's in_proj pieces (an empty one, as with d_mlp = 0), one of them unused by the loss (no
    gradient reaches it): values, and the input, weight and bias gradients, the input's accumulated over
    the blocks in one tensor (fp32: one node; fp64: separate linears)."""
    torch.manual_seed(0)
    sizes = [0, 40, 200, 4]
    x = torch.randn(2, 600, 128, dtype=dtype, requires_grad=True)
    w = torch.randn(sum(sizes), 128, dtype=dtype, requires_grad=True)
    b = torch.randn(sum(sizes), dtype=dtype, requires_grad=True) if bias else None
    assert _onednn_applies(x, w) == (dtype == torch.float32)
    leaves = [x, w] + ([b] if bias else [])
    got = split_linear(x, w, b, sizes)
    want = F.linear(x, w, b).split(sizes, -1)
    weights = [torch.randn_like(t) for t in want]
    used = [0, 2, 3]  # the 40-wide piece does not reach the loss
    got_grads = torch.autograd.grad(sum((got[i] * weights[i]).sum() for i in used), leaves)
    want_grads = torch.autograd.grad(sum((want[i] * weights[i]).sum() for i in used), leaves)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-4)
    for a, e in zip(got_grads, want_grads):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-3)
    # a frozen weight (LoRA on other layers): the input's gradient alone, the same
    (gx,) = torch.autograd.grad(sum((split_linear(x, w.detach(), b, sizes)[i] * weights[i]).sum() for i in used), x)
    torch.testing.assert_close(gx, want_grads[0], rtol=1e-5, atol=1e-3)


def test_small_products_other_dtypes_and_autocast_fall_back():
    w = torch.randn(64, 64)
    assert not _onednn_applies(torch.randn(448, 64), w)  # below the size where oneDNN pays
    big = torch.randn(8192, 64)
    assert not _onednn_applies(big.double(), w.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not _onednn_applies(big, w)
        assert linear(big, w).dtype == torch.bfloat16  # autocast still applies, as with F.linear
    assert not _onednn_applies(big, torch.randn(0, 64))  # an empty in_proj piece (d_mlp = 0)


@pytest.mark.parametrize("name", ["in_proj", "out_proj"])
def test_mamba2_uses_a_lora_wrapped_projection(name):
    """The mixer computes in_proj/out_proj from their weights; a wrapped layer must still be called."""
    torch.manual_seed(0)
    m = Mamba2(d_model=32, d_state=16, headdim=16, chunk_size=16)
    u = torch.randn(1, 40, 32)
    plain = m(u)
    setattr(m, name, LoRALinear(getattr(m, name), rank=4, alpha=4))
    torch.testing.assert_close(m(u), plain)  # zero-initialised B: no change yet
    torch.nn.init.normal_(getattr(m, name).lora_B.weight)
    assert (m(u) - plain).abs().max() > 1e-2
