"""Weights in and out of a longvid DiT.

Import (`import_weights`, the experiment's `model.init: {format, path}`):
  sat        the seed's SAT checkpoints: released CogVideoX weights or the fork's training checkpoints
             (sat_import.py), LoRA and Mamba keys included
  diffusers  a diffusers CogVideoXTransformer3DModel directory (config.json + safetensors, sharded or not;
             a pipeline directory's transformer/ is found too)
  longvid    a directory written by longvid.models.export.export_model
Every key must be accounted for. What may legitimately differ is listed below (ALLOWED_MISSING here,
IGNORED_SAT_KEYS in sat_import.py); anything else is an InputError naming the keys.

LoRA weights in the source go into the model's adapters where it has them (same rank required) and are
merged into the base weights where it does not: W += (alpha / r) * B A with the seed's alpha = 1.

Export: `export_diffusers` (a CogVideoXTransformer3DModel directory, LoRA merged) for models diffusers can
represent, and `export_lora_peft` (the adapters alone in diffusers' CogVideoX LoRA layout, PEFT config
included). Hybrid and long-video models are exported whole by export_model (config + safetensors).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from longvid.io import InputError, atomic_path, write_json
from longvid.models.config import PREFIX, DiTConfig
from longvid.models.convert_diffusers import (
    config_from_diffusers,
    diffusers_config,
    diffusers_to_longvid,
    longvid_to_diffusers,
)
from longvid.models.lora import lora_layers, lora_state_dict
from longvid.models.sat_import import IGNORED_SAT_KEYS, SAT_PREFIX, load_sat

log = logging.getLogger(__name__)

FORMATS = ("sat", "diffusers", "longvid")
# longvid keys a source may lack, and why that is harmless (never allowed when the source holds some).
ALLOWED_MISSING = {
    "transformer_blocks.N.{mamba_scan1,mamba_scan2,scan1_gating,scan2_gating}.*":
        "Mamba layers, when the source holds no Mamba weight at all (a pure CogVideoX checkpoint into a "
        "hybrid model): they keep their init, whose zero gates make the Mamba path an exact identity",
    "*.lora_A.*, *.lora_B.*":
        "LoRA adapters, when the source holds no LoRA weight at all: fresh adapters (B = 0) add nothing",
}
_MAMBA = re.compile(r"\.(mamba_scan[12]|scan[12]_gating)\.")
_LORA = re.compile(r"^(.+)\.lora_([AB])(?:\.(\d+))?\.weight$")
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
LORA_WEIGHTS = "adapter_model.safetensors"
QKV_SPLIT = {"to_qkv": ("to_q", "to_k", "to_v")}


class ImportResult(NamedTuple):
    missing: list[str]  # model keys left at their init (all within ALLOWED_MISSING)
    unexpected: list[str]  # source keys not loaded (all within the format's documented ignore list)


def import_weights(model: nn.Module, fmt: str, path: str | Path, extra: tuple[str | Path, ...] = (),
                   lora_alpha: float = 1.0, key: str = f"{PREFIX}.init") -> ImportResult:
    """Load `path` (format `fmt`) into `model` in place. `extra`: SAT checkpoints laid over the first
    (the fork's --load-extra); `lora_alpha`: scaling numerator for LoRA merged from the source."""
    cfg: DiTConfig = model.config
    if extra and fmt != "sat":
        raise InputError(f"{key}: extra checkpoints are only for format sat")
    if fmt == "sat":
        state, ignored = load_sat(path, cfg, tuple(extra))
    elif fmt == "diffusers":
        state, ignored = load_diffusers(path, cfg), []
    elif fmt == "longvid":
        state, ignored = load_longvid(path, cfg), []
    else:
        raise InputError(f"{key}.format={fmt!r}: must be one of {', '.join(FORMATS)}")
    state = _merge_foreign_lora(model, state, lora_alpha, str(path))
    return ImportResult(_load(model, state, str(path)), sorted(ignored))


def summary(result: ImportResult) -> str:
    """One line for the log: what kept its init and what was skipped, grouped."""
    def kind(key: str) -> str:
        if _MAMBA.search(key):
            return "Mamba"
        if _LORA.match(key):
            return "LoRA"
        inner = key.removeprefix(SAT_PREFIX)
        return next((p for p in IGNORED_SAT_KEYS if fnmatch.fnmatchcase(inner, p)), inner)

    def group(keys: list[str]) -> str:
        kinds: dict[str, int] = {}
        for k in keys:
            kinds[kind(k)] = kinds.get(kind(k), 0) + 1
        return ", ".join(f"{n} {kind}" for kind, n in kinds.items()) or "none"
    return f"kept init: {group(result.missing)}; ignored source keys: {group(result.unexpected)}"


# ---- sources --------------------------------------------------------------------------------------
def _check_positions(pos_embed: str, learnable: bool, cfg: DiTConfig, source: str) -> None:
    if pos_embed != cfg.pos_embed or learnable != cfg.learnable_pos_embed:
        raise InputError(f"{source}: positions are {pos_embed}{' + learnable' if learnable else ''}, but "
                         f"{PREFIX}.pos_embed={cfg.pos_embed}, "
                         f"{PREFIX}.learnable_pos_embed={cfg.learnable_pos_embed}")


def load_diffusers(path: str | Path, cfg: DiTConfig) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not (path / "config.json").is_file() and (path / "transformer" / "config.json").is_file():
        path = path / "transformer"  # a pipeline directory
    try:
        meta = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path / 'config.json'}: unreadable diffusers config ({e})") from None
    if meta.get("_class_name", "CogVideoXTransformer3DModel") != "CogVideoXTransformer3DModel":
        raise InputError(f"{path / 'config.json'}: a {meta['_class_name']}, "
                         "not a CogVideoXTransformer3DModel")
    theirs = config_from_diffusers(meta)
    _check_positions(theirs.pos_embed, theirs.learnable_pos_embed, cfg, str(path))
    # Not in the weights' shapes, but in what the weights compute: positions and normalisation.
    for theirs_key, ours_key in (("spatial_interpolation_scale", "spatial_interpolation"),
                                 ("temporal_interpolation_scale", "time_interpolation"), ("norm_eps", "norm_eps")):
        if float(getattr(theirs, ours_key)) != float(getattr(cfg, ours_key)):
            raise InputError(f"{path / 'config.json'}: {theirs_key}={getattr(theirs, ours_key)!r} but the experiment's "
                             f"model.{ours_key}={getattr(cfg, ours_key)!r}; set model.overrides.{ours_key} to match")
    index = path / f"{DIFFUSERS_WEIGHTS}.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (path / DIFFUSERS_WEIGHTS).is_file():
        files = [DIFFUSERS_WEIGHTS]
    else:
        raise InputError(f"{path}: no {DIFFUSERS_WEIGHTS} (or its .index.json); only safetensors are read")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(_read_safetensors(path / name))
    return diffusers_to_longvid(state)


def load_longvid(path: str | Path, cfg: DiTConfig) -> dict[str, torch.Tensor]:
    from longvid.models.export import read_meta

    path = Path(path)
    theirs = DiTConfig.from_dict(read_meta(path)["dit"])
    _check_positions(theirs.pos_embed, theirs.learnable_pos_embed, cfg, str(path))
    return _read_safetensors(path / "model.safetensors")


def _read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except FileNotFoundError:
        raise InputError(f"{file}: missing") from None
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types on corrupt files
        raise InputError(f"{file}: unreadable safetensors file ({type(e).__name__}: {e})") from None


# ---- loading --------------------------------------------------------------------------------------
@torch.no_grad()
def _merge_foreign_lora(model: nn.Module, state: dict[str, torch.Tensor], alpha: float,
                        source: str) -> dict[str, torch.Tensor]:
    """Fold source LoRA pairs into the base weight of every layer that has no adapter in `model`."""
    adapted = lora_layers(model)
    pairs: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    rescaled = set()
    for k in list(state):
        m = _LORA.match(k)
        if m and m.group(1) not in adapted:
            pairs.setdefault(m.group(1), {}).setdefault(int(m.group(3) or 0), {})[m.group(2)] = state.pop(k)
        elif m and adapted[m.group(1)].alpha != alpha:
            rescaled.add(m.group(1))
    if rescaled:
        log.warning("%s: %d adapters have an alpha other than the source's %g: the loaded LoRA weights act "
                    "scaled differently than they were trained", source, len(rescaled), alpha)
    for layer, parts in pairs.items():
        base = state.get(f"{layer}.weight")
        if (base is None or sorted(parts) != list(range(len(parts)))
                or any(set(p) != {"A", "B"} for p in parts.values())):
            raise InputError(f"{source}: LoRA weights for {layer} without its base weight or with a matrix "
                             "missing; give the base checkpoint too (extra checkpoints are laid over it)")
        rank = parts[0]["A"].shape[0]
        delta = torch.cat([parts[i]["B"].float() @ parts[i]["A"].float() for i in sorted(parts)])
        if delta.shape != base.shape:
            raise InputError(f"{source}: LoRA of {layer} makes a {tuple(delta.shape)} update for a "
                             f"{tuple(base.shape)} weight")
        delta *= alpha / rank
        state[f"{layer}.weight"] = (base.float() + delta).to(base.dtype)
    if pairs:
        log.info("%s: LoRA of %d layers merged into their weights (scaling alpha/r = %g/r; the model has no "
                 "adapters there)", source, len(pairs), alpha)
    return state


def _allowed_missing(key: str, source_has_mamba: bool, source_has_lora: bool) -> bool:
    if _MAMBA.search(key):
        return not source_has_mamba
    if _LORA.match(key):
        return not source_has_lora
    return False


def _load(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> list[str]:
    own = model.state_dict()
    has_mamba = any(_MAMBA.search(k) for k in state)
    has_lora = any(_LORA.match(k) for k in state)
    missing = sorted(set(own) - set(state))
    bad = [k for k in missing if not _allowed_missing(k, has_mamba, has_lora)]
    unexpected = sorted(set(state) - set(own))
    if bad or unexpected:
        raise InputError(f"{source}: {len(unexpected)} unexpected keys {_few(unexpected)} and {len(bad)} "
                         f"missing keys {_few(bad)} (outside the documented lists in "
                         "longvid.models.checkpoint_io)")
    for k, v in state.items():
        if v.shape != own[k].shape:
            raise InputError(f"{source}: {k} has shape {tuple(v.shape)}, the model's is "
                             f"{tuple(own[k].shape)} (check {PREFIX}.size and overrides)")
    model.load_state_dict(state, strict=False)
    return missing


def _few(keys: list[str], n: int = 6) -> str:
    return "[" + ", ".join(keys[:n]) + (f", ... {len(keys) - n} more" if len(keys) > n else "") + "]"


# ---- export ---------------------------------------------------------------------------------------
def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights with every unmerged LoRA delta added in, adapter weights dropped (no copy of
    the model is made)."""
    state = {k: v.detach() for k, v in model.state_dict().items() if not _LORA.match(k)}
    for name, layer in lora_layers(model).items():
        if not layer.merged:
            w = state[f"{name}.weight"]
            state[f"{name}.weight"] = (w.float() + layer.delta_weight().float()).to(w.dtype)
    return {k: v.to("cpu").contiguous() for k, v in state.items()}


def _diffusers_blockers(cfg: DiTConfig) -> list[str]:
    checks = [
        (cfg.mamba, f"{PREFIX}.mamba=true (no Mamba layers)"),
        (cfg.attention != "full", f"{PREFIX}.attention={cfg.attention} (full attention only)"),
        (cfg.sincos_repeat != "none", f"{PREFIX}.sincos_repeat={cfg.sincos_repeat} (plain 3D sin-cos only)"),
        (not cfg.qk_norm, f"{PREFIX}.qk_norm=false (QK-LayerNorm always on)"),
        (cfg.mlp_ratio != 4, f"{PREFIX}.mlp_ratio={cfg.mlp_ratio} (4x MLP only)"),
        (cfg.pos_embed == "rope" and cfg.rope_theta != 10000.0,
         f"{PREFIX}.rope_theta={cfg.rope_theta:g} (RoPE theta is always 10000 there)"),
    ]
    return [why for bad, why in checks if bad]


def export_diffusers(model: nn.Module, out_dir: str | Path) -> Path:
    """A diffusers CogVideoXTransformer3DModel directory (LoRA merged) that `from_pretrained` loads."""
    cfg: DiTConfig = model.config
    blockers = _diffusers_blockers(cfg)
    if blockers:
        raise InputError(f"diffusers' CogVideoXTransformer3DModel cannot represent {'; '.join(blockers)}: "
                         "export this model with longvid.models.export.export_model instead")
    out_dir = Path(out_dir)
    state = longvid_to_diffusers(merged_state_dict(model))
    with atomic_path(out_dir / DIFFUSERS_WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    config = {"_class_name": "CogVideoXTransformer3DModel", "_diffusers_version": _diffusers_version(),
              # CogVideoX 1.0 constants, written out so the file does not depend on diffusers' defaults
              "patch_size_t": None, "ofs_embed_dim": None, "flip_sin_to_cos": True, "freq_shift": 0,
              "activation_fn": "gelu-approximate", "timestep_activation_fn": "silu", "attention_bias": True,
              "norm_elementwise_affine": True, "patch_bias": True, "dropout": 0.0,
              **diffusers_config(cfg)}
    write_json(out_dir / "config.json", config)
    return out_dir


def export_lora_peft(model: nn.Module, out_dir: str | Path) -> Path:
    """The LoRA adapters alone, as diffusers' CogVideoX LoRA loader and PEFT read them:

    adapter_model.safetensors  keys `transformer.transformer_blocks.N.attn1.to_{q,k,v}.lora_{A,B}.weight`
                               and `...attn1.to_out.0.lora_{A,B}.weight` (the fused q|k|v adapter split
                               per partition); the PEFT config in the header (`lora_adapter_metadata`),
                               so `CogVideoXPipeline.load_lora_weights(out_dir)` gets alpha right
    adapter_config.json        the same LoraConfig (peft.LoraConfig.from_pretrained(out_dir))
    """
    from peft import LoraConfig

    layers = lora_layers(model)
    if not layers:
        raise InputError("export_lora_peft: the model has no LoRA adapters (train.regime=lora adds them)")
    kinds = {(m.rank, m.alpha, m.dropout.p if isinstance(m.dropout, nn.Dropout) else 0.0)
             for m in layers.values()}
    if len(kinds) > 1:
        raise InputError(f"export_lora_peft: adapters differ in (rank, alpha, dropout) {sorted(kinds)}; "
                         "one setting for all layers is supported")
    (rank, alpha, dropout), = kinds
    state = {f"transformer.{k}": v.to("cpu").contiguous()
             for k, v in longvid_to_diffusers(lora_state_dict(model, split=QKV_SPLIT)).items()}
    targets = sorted({k[len("transformer."):].split(".lora_")[0] for k in state})
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets).to_dict()
    config = {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}
    header = json.dumps({f"transformer.{k}": v for k, v in config.items()}, sort_keys=True)
    out_dir = Path(out_dir)
    with atomic_path(out_dir / LORA_WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "lora_adapter_metadata": header})
    write_json(out_dir / "adapter_config.json", config)
    return out_dir


def _diffusers_version() -> str:
    try:
        return version("diffusers")
    except PackageNotFoundError:
        return "0.30.0"
