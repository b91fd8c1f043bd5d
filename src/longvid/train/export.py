"""A trained model as a self-describing directory: `config.json` (the DiT config, the experiment,
the step) and `model.safetensors` (every weight, Mamba included; LoRA merged). `load_model` needs
nothing else to rebuild it."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from longvid.io import InputError, atomic_path, write_json
from longvid.models.config import DiTConfig
from longvid.models.lora import lora_layers, merge_lora


def export_model(model: torch.nn.Module, exp: dict, out_dir: Path, step: int) -> Path:
    """Write the model (with LoRA merged into a copy's weights) to `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if lora_layers(model):
        import copy

        model = copy.deepcopy(model)
        merge_lora(model)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()
             if ".lora_A." not in k and ".lora_B." not in k}
    with atomic_path(out_dir / "model.safetensors") as tmp:
        save_file(state, str(tmp))
    write_json(out_dir / "config.json", {"format": "longvid-dit", "step": step, "dit": model.config.to_dict(),
                                         "experiment": exp})
    return out_dir


def load_model(path: Path, device: str | torch.device = "cpu"):
    """Rebuild an exported model; a missing or unreadable file is one clear error."""
    from longvid.models.dit import DiT

    path = Path(path)
    try:
        meta = json.loads((path / "config.json").read_text())
        state = load_file(str(path / "model.safetensors"), device=str(device))
    except FileNotFoundError as e:
        raise InputError(f"{e.filename}: missing; not an exported longvid model") from None
    except Exception as e:  # noqa: BLE001 - safetensors/json raise various types on corrupt files
        raise InputError(f"{path}: unreadable exported model ({type(e).__name__}: {e})") from None
    model = DiT(DiTConfig.from_dict(meta["dit"])).to(device)
    model.load_state_dict(state)
    return model.eval(), meta
