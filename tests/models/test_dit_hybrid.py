"""Hybrid DiT: bidirectional Mamba2 scans inside the attention branch (seed-analysis §1.5)."""

from __future__ import annotations

import pytest
import torch

from longvid.models.dit import DiT, Gate, ScanBlock
from longvid.models.registry import make_config

# 13 latent frames, 3 windows of 5 frames
WINDOWED = {"num_frames": 49, "attention": "window", "attn_prefix_frames": 1, "attn_window": 4}
VARIANTS = {
    "post": {"mamba_order": "post"},
    "pre": {"mamba_order": "pre"},
    "parallel": {"mamba_parallel_scan": True},
    "identity-gate": {"mamba_gate_fn": "none", "mamba_parallel_scan": True},
    "width-adapters": {"mamba_d_model": 48},
    "strided": {"attention": "strided"},
    "repeat-attn": {"repeat_attn_steps": 1},
}


def inputs(T: int = 13, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, T, 16, 8, 8, generator=g), torch.tensor([321]), torch.randn(1, 16, 32, generator=g)


def randomised(model: DiT, seed: int = 0) -> DiT:
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "gating_alpha" not in name:
                p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.mark.parametrize("variant", VARIANTS)
def test_zero_gates_give_exactly_the_attention_only_model(variant):
    mamba_knobs = {k: v for k, v in VARIANTS[variant].items() if k.startswith("mamba")}
    other_knobs = {k: v for k, v in VARIANTS[variant].items() if not k.startswith("mamba")}
    base = make_config("tiny", **{**WINDOWED, **other_knobs})
    attn_only = randomised(DiT(base))
    hybrid = DiT(base.replace(mamba=True, **mamba_knobs))
    missing, unexpected = hybrid.load_state_dict(attn_only.state_dict(), strict=False)
    assert not unexpected and missing and all(".mamba_scan" in k or "_gating." in k for k in missing)
    randomised_mamba(hybrid)
    x, t, ctx = inputs()
    out = hybrid(x, t, ctx)
    with torch.no_grad():
        assert torch.equal(out, attn_only(x, t, ctx))
    # ...and the Mamba path is live: its gates receive gradient at zero
    out.square().mean().backward()
    for blk in hybrid.transformer_blocks:
        assert blk.scan1_gating.gating_alpha.grad.abs().sum() > 0
        assert blk.scan2_gating.gating_alpha.grad.abs().sum() > 0


def randomised_mamba(model: DiT) -> None:
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".mamba_scan" in name:
                p.add_(torch.randn_like(p) * 0.05)


def test_open_gates_change_the_output_per_composition():
    outs = {}
    compositions = {"post": {}, "pre": {"mamba_order": "pre"}, "para": {"mamba_parallel_scan": True}}
    for name, extra in compositions.items():
        model = randomised(DiT(make_config("tiny", **WINDOWED, mamba=True, mamba_gate_init=0.5, **extra)))
        with torch.no_grad():
            outs[name] = model(*inputs())
    assert (outs["post"] - outs["pre"]).abs().max() > 1e-3
    assert (outs["post"] - outs["para"]).abs().max() > 1e-3


def scan_pair(d_model: int = 0):
    cfg = make_config("tiny", mamba=True, mamba_d_model=d_model)
    torch.manual_seed(0)
    fwd, bwd = ScanBlock(cfg, backward=False), ScanBlock(cfg, backward=True)
    bwd.load_state_dict(fwd.state_dict())
    return fwd, bwd


def scanned(scan: ScanBlock, x: torch.Tensor, L: int) -> torch.Tensor:
    """The scan's own output: through a gate of 1 onto a zero residual."""
    return scan(x, L, Gate(x.shape[-1], "none", 1.0), torch.zeros_like(x))


@pytest.mark.parametrize("d_model", [0, 48])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_backward_scan_reverses_video_and_keeps_text_in_front(d_model, dtype):
    """fp32 on CPU reorders inside the norm and gated residual (C loops), fp64 with PyTorch copies."""
    fwd, bwd = (s.to(dtype) for s in scan_pair(d_model))
    L = 5
    x = torch.randn(2, L + 24, 64, dtype=dtype)
    flipped = torch.cat([x[:, :L], x[:, L:].flip(1)], 1)
    y = scanned(fwd, flipped, L)
    want = torch.cat([y[:, :L], y[:, L:].flip(1)], 1)
    assert torch.allclose(scanned(bwd, x, L), want, atol=1e-6)


def reach(scan: ScanBlock, L: int, n: int, i: int) -> torch.Tensor:
    """Which input tokens output token i depends on (gradient, so no cancellation in differences)."""
    x = torch.randn(1, L + n, 64, requires_grad=True)
    (g,) = torch.autograd.grad(scanned(scan, x, L)[0, i].sum(), x)
    return g[0].abs().amax(-1) > 0


def test_scan_directions_by_dependence():
    """Forward: a token sees text and earlier video. Backward: text sees only text; a video token
    sees all text and LATER video."""
    fwd, bwd = scan_pair()
    L, n, i = 4, 12, 4 + 5
    seen = reach(fwd, L, n, i)
    assert seen[:i + 1].all() and not seen[i + 1:].any()
    seen = reach(bwd, L, n, i)
    assert seen[:L].all() and not seen[L:i].any() and seen[i:].all()
    seen = reach(bwd, L, n, 2)
    assert seen[:3].all() and not seen[3:].any()


def test_parameter_names_follow_the_seed_per_block():
    keys = DiT(make_config("tiny", mamba=True, mamba_d_model=48)).state_dict().keys()
    for k in ("mamba_scan1.block.norm.weight", "mamba_scan2.block.mixer.A_log",
              "mamba_scan1.in_projection.weight", "scan2_gating.gating_alpha"):
        assert f"transformer_blocks.1.{k}" in keys, k


def test_hybrid_trains_its_gates():
    model = randomised(DiT(make_config("tiny", **WINDOWED, mamba=True)))  # as if pre-trained: adaLN open
    new = [p for n, p in model.named_parameters() if "mamba" in n or "gating" in n]
    opt = torch.optim.AdamW(new, lr=1e-2)
    x, t, ctx = inputs()
    target = torch.randn_like(x)
    for _ in range(3):
        loss = (model(x, t, ctx) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(blk.scan1_gating.gating_alpha.abs().max() > 0 for blk in model.transformer_blocks)
