"""Training regimes: which parameters train, how weight decay is grouped, and a table of counts.

Regimes (seed-analysis §1.7), parameters chosen by glob patterns on their qualified names:
  full   every parameter of the model.
  lora   adapters on the attention projections (lora.py) and nothing else of the base model, except
         the Mamba layers and their gates when the model has them: the seed always trained any
         parameter named like `mamba` (its "LoRA post Mamba" configs rely on that).
  mamba  the Mamba layers and their gates only (the seed's not_trainable_prefixes: ['all']).
`extra_trainable` patterns add parameters to any regime and `frozen` patterns remove them (frozen wins).

Weight decay: none for A_log, D, dt_bias, gates, normalisation layers and biases, which are scales,
offsets and rates rather than feature detectors (Mamba and nanoGPT practice). The seed exempted only
biases and LayerNorms, so its A_log, D, dt_bias and gates were decayed; we deliberately differ.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from torch import nn

from longvid.io import InputError
from longvid.models.lora import add_lora

REGIMES = ("full", "lora", "mamba")
# Our DiT's names: transformer_blocks.N.mamba_scan{1,2}.* and transformer_blocks.N.scan{1,2}_gating.*
MAMBA_PATTERNS = ("*mamba*", "*gating*")
LORA_PATTERNS = ("*.lora_A.*", "*.lora_B.*")
# The seed's LoRA layers: fused q/k/v (one adapter per partition) and the attention output projection.
DIT_LORA_TARGETS = {"*attn1.to_qkv": 3, "*attn1.to_out": 1}
NO_DECAY_LEAVES = ("bias", "A_log", "D", "dt_bias")


@dataclass(frozen=True)
class Regime:
    name: str = "full"
    lora_rank: int = 128
    lora_alpha: float = 1.0  # scaling = alpha / rank, as in the seed (alpha 1 => 1/r)
    lora_dropout: float = 0.0
    lora_targets: dict[str, int] = field(default_factory=lambda: dict(DIT_LORA_TARGETS))
    extra_trainable: tuple[str, ...] = ()
    frozen: tuple[str, ...] = ()


def _matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def apply_regime(model: nn.Module, regime: Regime, key: str = "train.regime") -> list[str]:
    """Add adapters if the regime needs them and set requires_grad; returns the trainable names."""
    if regime.name not in REGIMES:
        raise InputError(f"{key}={regime.name!r}: must be one of {', '.join(REGIMES)}")
    if regime.name == "lora":
        add_lora(model, regime.lora_targets, regime.lora_rank, regime.lora_alpha, regime.lora_dropout)
    patterns = {"full": ("*",), "lora": LORA_PATTERNS + MAMBA_PATTERNS, "mamba": MAMBA_PATTERNS}[regime.name]
    patterns += tuple(regime.extra_trainable)
    trainable = []
    for name, p in model.named_parameters():
        on = _matches(name, patterns) and not _matches(name, regime.frozen)
        p.requires_grad_(on)
        if on:
            trainable.append(name)
    if not trainable:
        raise InputError(f"{key}={regime.name!r}: no parameter of {type(model).__name__} is trainable "
                         f"(patterns {list(patterns)}, frozen {list(regime.frozen)})")
    return trainable


def _norm_params(model: nn.Module) -> set[str]:
    """Parameters owned by normalisation layers, found by type (LayerNorm, GroupNorm, RMSNorm, Mamba's
    RMSNormGated, ...). Names are not enough: the DiT's adaLN `norm1.linear` is a Linear to decay."""
    out = set()
    for mname, m in model.named_modules():
        if "Norm" in type(m).__name__:
            out.update(f"{mname}.{n}" if mname else n for n, _ in m.named_parameters(recurse=False))
    return out


def no_weight_decay(name: str, norm_params: set[str]) -> bool:
    leaf = name.rpartition(".")[2]
    return (leaf in NO_DECAY_LEAVES or name in norm_params
            or any(part == "gate" or "gating" in part for part in name.split(".")))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Optimizer groups over the trainable parameters: decayed and not decayed (names kept for logs)."""
    norms = _norm_params(model)
    groups = {True: ([], []), False: ([], [])}
    for name, p in model.named_parameters():
        if p.requires_grad:
            params, names = groups[no_weight_decay(name, norms)]
            params.append(p)
            names.append(name)
    return [{"params": groups[False][0], "param_names": groups[False][1], "weight_decay": weight_decay},
            {"params": groups[True][0], "param_names": groups[True][1], "weight_decay": 0.0}]


def parameter_counts(model: nn.Module) -> list[dict]:
    """Total and trainable parameters per top-level module (parameters directly on the model: "(own)")."""
    rows: dict[str, list[int]] = {}
    for name, p in model.named_parameters():
        top = name.split(".", 1)[0] if "." in name else "(own)"
        row = rows.setdefault(top, [0, 0])
        row[0] += p.numel()
        row[1] += p.numel() if p.requires_grad else 0
    return [{"module": k, "total": t, "trainable": tr} for k, (t, tr) in rows.items()]


def parameter_table(model: nn.Module) -> str:
    rows = parameter_counts(model)
    total = {"module": "total", "total": sum(r["total"] for r in rows),
             "trainable": sum(r["trainable"] for r in rows)}
    width = max(len(r["module"]) for r in rows + [total])
    lines = [f"{'module':<{width}}  {'total':>15}  {'trainable':>15}  {'%':>6}"]
    for r in rows + [total]:
        pct = 100 * r["trainable"] / r["total"] if r["total"] else 0.0
        lines.append(f"{r['module']:<{width}}  {r['total']:>15,}  {r['trainable']:>15,}  {pct:>6.2f}")
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    return "\n".join(lines)
