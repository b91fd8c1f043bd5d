"""LoRA (against PEFT), training regimes, weight-decay groups and the parameter table, on a small
module named like the DiT (fused attn1.to_qkv, Mamba layers, gates, norms)."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
from torch import nn

from longvid.io import InputError
from longvid.models.lora import (LoRALinear, add_lora, load_lora_state_dict, lora_state_dict, merge_lora,
                                 unmerge_lora)
from longvid.models.regimes import Regime, apply_regime, param_groups, parameter_counts, parameter_table

D = 8


class Attn(nn.Module):
    def __init__(self, fused: bool):
        super().__init__()
        if fused:
            self.to_qkv = nn.Linear(D, 3 * D)
        else:
            self.to_q, self.to_k, self.to_v = nn.Linear(D, D), nn.Linear(D, D), nn.Linear(D, D)
        self.to_out = nn.Linear(D, D)
        self.fused = fused

    def forward(self, x):
        qkv = self.to_qkv(x) if self.fused else torch.cat([self.to_q(x), self.to_k(x), self.to_v(x)], -1)
        q, k, v = qkv.chunk(3, -1)
        return self.to_out(torch.softmax(q @ k.transpose(-1, -2), -1) @ v)


class Mixer(nn.Module):  # named like mamba_ssm's Mamba2
    def __init__(self):
        super().__init__()
        self.in_proj = nn.Linear(D, D)
        self.A_log, self.D, self.dt_bias = (nn.Parameter(torch.randn(4)) for _ in range(3))
        self.norm = nn.LayerNorm(D)

    def forward(self, x):
        return self.norm(self.in_proj(x)) * self.D.mean() + self.A_log.sum() + self.dt_bias.sum()


class Gate(nn.Module):
    def __init__(self):
        super().__init__()
        self.gating_alpha = nn.Parameter(torch.zeros(D))


class Block(nn.Module):
    def __init__(self, fused: bool):
        super().__init__()
        self.norm1 = nn.Module()
        self.norm1.linear = nn.Linear(D, 2 * D)  # the DiT's adaLN modulation: decayed despite "norm"
        self.norm1.norm = nn.LayerNorm(D)
        self.attn1 = Attn(fused)
        self.mamba_scan1 = Mixer()
        self.scan1_gating = Gate()
        self.gate = nn.Parameter(torch.ones(D))
        self.ff = nn.Linear(D, D)

    def forward(self, x):
        gate = torch.tanh(self.scan1_gating.gating_alpha)
        x = x + self.attn1(self.norm1.norm(x)) + gate * self.mamba_scan1(x)
        return x + self.gate * self.ff(x)


class Toy(nn.Module):
    def __init__(self, fused: bool = True):
        super().__init__()
        self.embed = nn.Linear(4, D)
        self.transformer_blocks = nn.ModuleList(Block(fused) for _ in range(2))
        self.proj_out = nn.Linear(D, 4)
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        h = self.embed(x)
        for b in self.transformer_blocks:
            h = b(h)
        return self.proj_out(h) * self.scale


def toy(fused: bool = True, seed: int = 0) -> Toy:
    torch.manual_seed(seed)
    return Toy(fused)


X = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(9))


def randomize_lora(model):
    g = torch.Generator().manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data = torch.randn(p.shape, generator=g) * 0.1


# ---- LoRA ---------------------------------------------------------------------------------------------

def test_fresh_lora_is_identity_and_keeps_base_keys():
    base, model = toy(), toy()
    before = set(model.state_dict())
    wrapped = add_lora(model, {"*attn1.to_qkv": 3, "*attn1.to_out": 1}, rank=4, alpha=2.0)
    assert wrapped == [f"transformer_blocks.{i}.attn1.{n}" for i in range(2) for n in ("to_qkv", "to_out")]
    assert before <= set(model.state_dict())  # base weights keep their keys; adapters are added
    layer = model.transformer_blocks[0].attn1.to_qkv
    assert isinstance(layer, LoRALinear) and isinstance(layer, nn.Linear) and layer.scaling == 0.5 and len(layer.lora_A) == 3
    assert layer.lora_A[0].weight.shape == (4, D) and layer.lora_B[0].weight.shape == (D, 4)
    assert torch.equal(model(X), base(X))  # B = 0


def test_lora_forward_scaling_merge_unmerge():
    model = toy()
    add_lora(model, ["*attn1.to_out"], rank=2, alpha=6.0)
    randomize_lora(model)
    layer = model.transformer_blocks[0].attn1.to_out
    x = torch.randn(3, D)
    want = x @ layer.weight.T + layer.bias + 3.0 * (x @ layer.lora_A.weight.T @ layer.lora_B.weight.T)
    torch.testing.assert_close(layer(x), want)
    w0, y0 = layer.weight.clone(), model(X)
    merge_lora(model)
    assert layer.merged and not torch.equal(layer.weight, w0)
    torch.testing.assert_close(model(X), y0, atol=1e-6, rtol=0)
    unmerge_lora(model)
    torch.testing.assert_close(layer.weight, w0, atol=1e-6, rtol=0)
    torch.testing.assert_close(model(X), y0, atol=1e-6, rtol=0)


def test_fused_lora_equals_peft_on_separate_qkv_layers():
    """Our 3-partition adapter on a fused to_qkv, exported with split names, loaded into PEFT's LoRA on
    separate to_q/to_k/to_v layers (the diffusers layout), computes the same function."""
    ours, split = toy(fused=True), toy(fused=False)
    for bo, bs in zip(ours.transformer_blocks, split.transformer_blocks):  # same base weights
        with torch.no_grad():
            bs.attn1.to_q.weight.copy_(bo.attn1.to_qkv.weight[:D])
            bs.attn1.to_k.weight.copy_(bo.attn1.to_qkv.weight[D:2 * D])
            bs.attn1.to_v.weight.copy_(bo.attn1.to_qkv.weight[2 * D:])
            for i, n in enumerate("qkv"):
                getattr(bs.attn1, f"to_{n}").bias.copy_(bo.attn1.to_qkv.bias[i * D:(i + 1) * D])
        bs.load_state_dict({k: v for k, v in bo.state_dict().items() if "to_qkv" not in k}, strict=False)
    torch.testing.assert_close(ours(X), split(X))
    add_lora(ours, {"*attn1.to_qkv": 3, "*attn1.to_out": 1}, rank=4, alpha=8.0)
    randomize_lora(ours)
    state = lora_state_dict(ours, split={"to_qkv": ("to_q", "to_k", "to_v")})
    assert "transformer_blocks.0.attn1.to_k.lora_A.weight" in state
    assert "transformer_blocks.1.attn1.to_out.lora_B.weight" in state and len(state) == 16
    cfg = LoraConfig(r=4, lora_alpha=8.0, target_modules=["to_q", "to_k", "to_v", "to_out"],
                     init_lora_weights=False)
    split = inject_adapter_in_model(cfg, split)
    result = set_peft_model_state_dict(split, state)
    assert not result.unexpected_keys
    torch.testing.assert_close(ours(X), split(X), atol=1e-6, rtol=0)
    assert not torch.allclose(ours(X), toy()(X), atol=1e-3)  # the adapters do something


def test_lora_state_dict_roundtrip_and_errors():
    a, b = toy(), toy()
    for m in (a, b):
        add_lora(m, {"*attn1.to_qkv": 3}, rank=2, alpha=1.0)
    randomize_lora(a)
    for split in (None, {"to_qkv": ("to_q", "to_k", "to_v")}):
        load_lora_state_dict(b, lora_state_dict(a, split), split)
        torch.testing.assert_close(a(X), b(X))
    assert "transformer_blocks.0.attn1.to_qkv.lora_A.2.weight" in lora_state_dict(a)
    with pytest.raises(InputError, match="1 missing"):
        sd = lora_state_dict(a)
        sd.pop(next(iter(sd)))
        load_lora_state_dict(b, sd)
    with pytest.raises(InputError, match=r"'\*attn9\.x' match no module"):
        add_lora(toy(), ["*attn9.x"], rank=2, alpha=1.0)
    with pytest.raises(InputError, match="not a Linear"):
        add_lora(toy(), ["*.mamba_scan1.norm"], rank=2, alpha=1.0)


# ---- regimes --------------------------------------------------------------------------------------------

def test_full_regime_trains_everything():
    m = toy()
    names = apply_regime(m, Regime("full"))
    assert len(names) == len(list(m.parameters())) and all(p.requires_grad for p in m.parameters())


def test_lora_regime_trains_adapters_and_mamba_like_the_seed():
    m = toy()
    names = apply_regime(m, Regime("lora", lora_rank=4, lora_alpha=4.0))
    assert any(".lora_A." in n for n in names) and any(".lora_B." in n for n in names)
    assert "transformer_blocks.0.mamba_scan1.A_log" in names
    assert "transformer_blocks.1.scan1_gating.gating_alpha" in names
    assert not any(n.endswith("attn1.to_qkv.weight") or n.startswith("embed") or ".ff." in n for n in names)
    # LoRA only, Mamba frozen, via `frozen`:
    m = toy()
    names = apply_regime(m, Regime("lora", lora_rank=4, frozen=("*mamba*", "*gating*")))
    assert names and all(".lora_" in n for n in names)


def test_mamba_regime_and_bad_regimes():
    m = toy()
    names = apply_regime(m, Regime("mamba", extra_trainable=("proj_out.*",)))
    assert set(names) == {n for n, _ in m.named_parameters()
                          if "mamba" in n or "gating" in n or n.startswith("proj_out.")}
    with pytest.raises(InputError, match="train.regime='qlora'"):
        apply_regime(toy(), Regime("qlora"))
    plain = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(InputError, match="no parameter of Sequential is trainable"):
        apply_regime(plain, Regime("mamba"))


def test_weight_decay_groups():
    m = toy()
    apply_regime(m, Regime("lora", lora_rank=2, extra_trainable=("*",)))
    decay, no_decay = param_groups(m, weight_decay=1e-4)
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    nd = set(no_decay["param_names"])
    for name in ("mamba_scan1.A_log", "mamba_scan1.D", "mamba_scan1.dt_bias", "scan1_gating.gating_alpha",
                 "gate", "mamba_scan1.norm.weight", "mamba_scan1.norm.bias", "norm1.norm.weight", "ff.bias",
                 "attn1.to_qkv.bias"):
        assert f"transformer_blocks.0.{name}" in nd, name
    d = set(decay["param_names"])
    for name in ("norm1.linear.weight", "attn1.to_qkv.weight", "attn1.to_qkv.lora_A.0.weight",
                 "mamba_scan1.in_proj.weight", "ff.weight"):
        assert f"transformer_blocks.0.{name}" in d, name
    assert "embed.weight" in d and "scale" in d
    assert len(d) + len(nd) == len(list(m.parameters())) and not d & nd
    torch.optim.AdamW([decay, no_decay], lr=1e-3)  # accepted as optimizer groups


def test_parameter_table_counts_per_top_level_module():
    m = toy()
    apply_regime(m, Regime("mamba"))
    rows = {r["module"]: r for r in parameter_counts(m)}
    assert set(rows) == {"embed", "transformer_blocks", "proj_out", "(own)"}
    assert rows["embed"] == {"module": "embed", "total": 4 * D + D, "trainable": 0}
    mamba = sum(p.numel() for n, p in m.named_parameters() if "mamba" in n or "gating" in n)
    assert rows["transformer_blocks"]["trainable"] == mamba
    assert rows["(own)"]["total"] == 1
    table = parameter_table(m)
    lines = table.splitlines()
    assert lines[0].split() == ["module", "total", "trainable", "%"]
    total = sum(p.numel() for p in m.parameters())
    assert lines[-1].split()[:3] == ["total", f"{total:,}", f"{mamba:,}"]
    print(table)
