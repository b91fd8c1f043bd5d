"""A trained model as a self-describing directory: the train stage's declared output, `final/`.

    config.json        format, step, the DiT config, the experiment, and provenance: the code version,
                       the dataset's DVC version and the run identity it was trained under
    model.safetensors  every weight, Mamba included; LoRA merged
    metrics.jsonl      the training curve (one row per logged step), for the report

`load_model` needs nothing else to rebuild the model; `model_identity` names it (step and weight
hash) for the samples and metrics made from it; `read_meta` is the one parser of config.json.
Stages downstream of training read only this directory, never the trainer's run directory.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from longvid.io import InputError, atomic_path, write_json
from longvid.models.config import DiTConfig
from longvid.models.lora import lora_layers, merge_lora

CONFIG_FILE, WEIGHTS_FILE, METRICS_FILE = "config.json", "model.safetensors", "metrics.jsonl"


def export_model(model: torch.nn.Module, exp: dict, out_dir: Path, step: int, provenance: dict | None = None,
                 metrics: Path | None = None) -> Path:
    """Write the model (LoRA merged into a copy's weights), its training curve and config.json last,
    so a directory with config.json is complete."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if lora_layers(model):
        model = copy.deepcopy(model)
        merge_lora(model)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()
             if ".lora_A." not in k and ".lora_B." not in k}
    if metrics is not None and Path(metrics).is_file():
        with atomic_path(out_dir / METRICS_FILE) as tmp:
            shutil.copyfile(metrics, tmp)
    with atomic_path(out_dir / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp))
    write_json(out_dir / CONFIG_FILE, {"format": "longvid-dit", "step": step, "dit": model.config.to_dict(),
                                       "experiment": exp, "provenance": provenance or {}})
    return out_dir


def read_meta(path: Path) -> dict:
    """config.json of an exported model; a missing or unreadable one is one clear error."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{path}: model directory does not exist (expected an exported model, "
                         "results/train/{experiment}/final)")
    file = path / CONFIG_FILE
    try:
        meta = json.loads(file.read_text())
        DiTConfig.from_dict(meta["dit"])
        int(meta["step"])
    except FileNotFoundError:
        raise InputError(f"{file}: missing; not an exported longvid model") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{file}: not an exported longvid model ({type(e).__name__}: {e})") from None
    return meta


def model_identity(path: Path) -> dict:
    """Step and weight hash: a model retrained at the same path and step still gets new samples."""
    meta, weights = read_meta(path), Path(path) / WEIGHTS_FILE
    if not weights.is_file():
        raise InputError(f"{weights}: missing; not an exported longvid model")
    with open(weights, "rb") as f:
        return {"step": meta["step"], "sha256": hashlib.file_digest(f, "sha256").hexdigest()}


def load_model(path: Path, device: str | torch.device = "cpu"):
    """(model in eval mode, config.json) of an exported model."""
    from longvid.models.dit import DiT

    meta = read_meta(path)
    weights = Path(path) / WEIGHTS_FILE
    try:
        state = load_file(str(weights), device=str(device))
    except FileNotFoundError:
        raise InputError(f"{weights}: missing; not an exported longvid model") from None
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types on corrupt files
        raise InputError(f"{weights}: unreadable exported model ({type(e).__name__}: {e})") from None
    model = DiT(DiTConfig.from_dict(meta["dit"])).to(device)
    model.load_state_dict(state)
    return model.eval(), meta
