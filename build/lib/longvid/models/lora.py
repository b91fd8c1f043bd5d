"""Low-rank adapters on nn.Linear layers chosen by name pattern (seed-analysis §1.7).

    y = W x + b + (alpha / r) * B A dropout(x),    A: (r, in) kaiming-uniform,  B: (out, r) zeros

so a freshly adapted model computes exactly what the base model computes. The seed (SAT's LoraMixin)
puts LoRA on every layer's fused query_key_value with one (A, B) pair per q/k/v partition, and on the
attention output projection; r = 128 or 256 with alpha = 1, i.e. scaling 1/r. `partitions=3` on a
fused projection reproduces that: partition p of the output gets its own A_p, B_p.

The adapted layer is still an nn.Linear with its own `weight`/`bias` at the same state-dict keys, so
base checkpoints load unchanged; the adapter adds `<layer>.lora_A.weight` / `<layer>.lora_B.weight`
(PEFT's names) or, with partitions, `<layer>.lora_A.<p>.weight`. `lora_state_dict(..., split=...)`
renames partitions to separate layers (to_qkv -> to_q, to_k, to_v), the diffusers/PEFT layout.
"""

from __future__ import annotations

import fnmatch

import torch
import torch.nn.functional as F
from torch import nn

from longvid.io import InputError


class LoRALinear(nn.Linear):
    def __init__(self, base: nn.Linear, rank: int, alpha: float, partitions: int = 1, dropout: float = 0.0):
        nn.Module.__init__(self)  # adopt base's parameters rather than allocating new ones
        if rank <= 0:
            raise InputError(f"train.lora.rank={rank}: must be > 0")
        if base.out_features % partitions:
            raise InputError(f"LoRA partitions={partitions} do not divide out_features={base.out_features}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.rank, self.alpha, self.partitions = rank, float(alpha), partitions
        self.scaling = self.alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        kw = dict(bias=False, device=base.weight.device, dtype=base.weight.dtype)
        part_out = base.out_features // partitions
        A = [nn.Linear(base.in_features, rank, **kw) for _ in range(partitions)]  # kaiming-uniform(a=sqrt 5)
        B = [nn.Linear(rank, part_out, **kw) for _ in range(partitions)]
        for b in B:
            nn.init.zeros_(b.weight)
        self.lora_A = A[0] if partitions == 1 else nn.ModuleList(A)
        self.lora_B = B[0] if partitions == 1 else nn.ModuleList(B)
        self.merged = False

    def _pairs(self) -> list[tuple[nn.Linear, nn.Linear]]:
        if self.partitions == 1:
            return [(self.lora_A, self.lora_B)]
        return list(zip(self.lora_A, self.lora_B))

    def delta_weight(self) -> torch.Tensor:
        """scaling * B A, stacked over partitions: what merging adds to `weight`."""
        return torch.cat([b.weight @ a.weight for a, b in self._pairs()], dim=0) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if self.merged:
            return y
        h = self.dropout(x)
        lora = [b(a(h)) for a, b in self._pairs()]
        return y + (lora[0] if len(lora) == 1 else torch.cat(lora, dim=-1)) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.weight += self.delta_weight().to(self.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.weight -= self.delta_weight().to(self.weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha:g}, partitions={self.partitions}"


def add_lora(model: nn.Module, targets: dict[str, int] | list[str], rank: int, alpha: float,
             dropout: float = 0.0, key: str = "train.lora.targets") -> list[str]:
    """Wrap every nn.Linear whose qualified name matches a glob in `targets` (pattern -> partitions,
    or a list meaning one partition each). Returns the wrapped names; a pattern that matches nothing
    is an error, since a typo would otherwise silently train nothing."""
    targets = {p: 1 for p in targets} if isinstance(targets, (list, tuple)) else dict(targets)
    hits: dict[str, int] = {}
    used = set()
    adapters = tuple(f"{n}." for n, m in model.named_modules() if isinstance(m, LoRALinear))
    for name, module in model.named_modules():
        if name.startswith(adapters):  # never adapt an adapter's own A/B layers
            continue
        for pattern, parts in targets.items():
            if fnmatch.fnmatchcase(name, pattern):
                if not isinstance(module, nn.Linear):
                    raise InputError(f"{key}: {pattern!r} matches {name} ({type(module).__name__}), "
                                     "not a Linear")
                if not isinstance(module, LoRALinear):
                    hits[name] = parts
                used.add(pattern)
                break
    missing = [p for p in targets if p not in used]
    if missing:
        raise InputError(f"{key}: {', '.join(map(repr, missing))} match no module of {type(model).__name__}")
    for name, parts in hits.items():
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, leaf, LoRALinear(getattr(parent, leaf), rank, alpha, parts, dropout))
    return list(hits)


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def merge_lora(model: nn.Module) -> None:
    for m in lora_layers(model).values():
        m.merge()


def unmerge_lora(model: nn.Module) -> None:
    for m in lora_layers(model).values():
        m.unmerge()


def _adapter_keys(model: nn.Module, split: dict[str, tuple[str, ...]] | None):
    """(A key, B key, A module, B module) for every adapter pair, in the layout lora_state_dict writes."""
    for name, m in lora_layers(model).items():
        for p, (a, b) in enumerate(m._pairs()):
            if m.partitions == 1:
                stem, suffix = name, ""
            elif split is None:
                stem, suffix = name, f".{p}"
            else:
                parent, _, leaf = name.rpartition(".")
                if leaf not in split or len(split[leaf]) != m.partitions:
                    raise InputError(f"LoRA layer {name}: {m.partitions} partitions need {m.partitions} "
                                     f"split names for {leaf!r}, got {split.get(leaf)}")
                stem, suffix = (f"{parent}." if parent else "") + split[leaf][p], ""
            yield f"{stem}.lora_A{suffix}.weight", f"{stem}.lora_B{suffix}.weight", a, b


def lora_state_dict(model: nn.Module,
                    split: dict[str, tuple[str, ...]] | None = None) -> dict[str, torch.Tensor]:
    """Only the adapter weights. With `split` (e.g. {"to_qkv": ("to_q", "to_k", "to_v")}) partitioned
    layers are written as separate layers, each with PEFT's `lora_A.weight` / `lora_B.weight`."""
    out = {}
    for ka, kb, a, b in _adapter_keys(model, split):
        out[ka], out[kb] = a.weight.detach().clone(), b.weight.detach().clone()
    return out


@torch.no_grad()
def load_lora_state_dict(model: nn.Module, state: dict[str, torch.Tensor],
                         split: dict[str, tuple[str, ...]] | None = None) -> None:
    """Inverse of lora_state_dict; every adapter weight must be present and every key used."""
    pairs = list(_adapter_keys(model, split))
    expected = {k for ka, kb, _, _ in pairs for k in (ka, kb)}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise InputError(f"LoRA state dict: {len(missing)} missing (e.g. {missing[:2]}), "
                         f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})")
    for ka, kb, a, b in pairs:
        a.weight.copy_(state[ka])
        b.weight.copy_(state[kb])
