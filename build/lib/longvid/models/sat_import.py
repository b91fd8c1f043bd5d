"""The seed's SAT checkpoints (seed-analysis §2.1-2.4) as longvid state dicts.

    <dir>/latest                                 the iteration to load: "1000", "1" or "release"
    <dir>/<iteration>/mp_rank_00_model_states.pt torch pickle; its "module" entry is the engine's state
                                                 dict, the DiT's keys prefixed `model.diffusion_model.`

Released CogVideoX weights and the fork's DeepSpeed training checkpoints share this layout; the latter
hold only trainable tensors (LoRA/Mamba-only runs store no base weights), so they are loaded on top of a
base with `extra` (the fork's `--load-extra`). The key mapping is tabulated in convert_diffusers.py.

Files are read with torch.load(weights_only=True). DeepSpeed model-state files also carry RNG states
(numpy arrays) and may carry argparse namespaces; those data-only types are allowed during the load.
Anything else in the pickle (a class or a function, i.e. code) is refused, never loaded unsafely.
"""

from __future__ import annotations

import argparse
import fnmatch
import pickle
import re
import zipfile
from pathlib import Path

import torch

from longvid.io import InputError
from longvid.models.config import PREFIX, DiTConfig

SAT_PREFIX = "model.diffusion_model."
MODEL_STATES = "mp_rank_00_model_states.pt"

# SAT keys that are deliberately not loaded (full keys; DiT keys without SAT_PREFIX), and why.
IGNORED_SAT_KEYS = {
    "mixins.pos_embed.freqs_sin": "RoPE table (persistent buffer upstream, sized for 13 frames); "
                                  "longvid computes it for the input",
    "mixins.pos_embed.freqs_cos": "RoPE table, as freqs_sin",
    "mixins.pos_embed.pos_embedding": "sin-cos models (2B): SAT's frozen table, sized for the checkpoint's "
                                      "frame count; longvid computes it for the input. With "
                                      f"{PREFIX}.learnable_pos_embed (5B-I2V) it is loaded as "
                                      "patch_embed.pos_embedding instead",
    "first_stage_model.*": "the VAE; model.vae.path loads it",
    "conditioner.*": "the T5 text encoder; model.text.path loads it",
}

_L = r"transformer\.layers\.(\d+)\."
_B = r"transformer_blocks.\1."
_RULES = [(re.compile(p + "$"), r) for p, r in [
    (_L + r"attention\.query_key_value\.(?:original\.)?(weight|bias)", _B + r"attn1.to_qkv.\2"),
    (_L + r"attention\.query_key_value\.matrix_([AB])\.(\d+)", _B + r"attn1.to_qkv.lora_\2.\3.weight"),
    (_L + r"attention\.dense\.(?:original\.)?(weight|bias)", _B + r"attn1.to_out.\2"),
    (_L + r"attention\.dense\.matrix_([AB])\.0", _B + r"attn1.to_out.lora_\2.weight"),
    (_L + r"input_layernorm\.(weight|bias)", _B + r"norm1.norm.\2"),
    (_L + r"post_attention_layernorm\.(weight|bias)", _B + r"norm2.norm.\2"),
    (_L + r"mlp\.dense_h_to_4h\.(weight|bias)", _B + r"ff.fc_in.\2"),
    (_L + r"mlp\.dense_4h_to_h\.(weight|bias)", _B + r"ff.fc_out.\2"),
    (r"mixins\.adaln_layer\.query_layernorm_list\.(\d+)\.(weight|bias)", _B + r"attn1.norm_q.\2"),
    (r"mixins\.adaln_layer\.key_layernorm_list\.(\d+)\.(weight|bias)", _B + r"attn1.norm_k.\2"),
    (r"transformer\.final_layernorm\.(weight|bias)", r"norm_final.\1"),
    (r"time_embed\.0\.(weight|bias)", r"time_embedding.linear_1.\1"),
    (r"time_embed\.2\.(weight|bias)", r"time_embedding.linear_2.\1"),
    (r"mixins\.patch_embed\.(proj|text_proj)\.(weight|bias)", r"patch_embed.\1.\2"),
    (r"mixins\.final_layer\.norm_final\.(weight|bias)", r"norm_out.norm.\1"),
    (r"mixins\.final_layer\.adaLN_modulation\.1\.(weight|bias)", r"norm_out.linear.\1"),
    (r"mixins\.final_layer\.linear\.(weight|bias)", r"proj_out.\1"),
    # the fork's HEAD MambaAttentionLayerMixin: one ScanBlock (+ width adapters on 2B) and gate per layer
    ((r"mixins\.mamba_attn\.mamba_scan([12])_list\.(\d+)\."
      r"(block\.(?:norm|mixer)\..+|(?:in|out)_projection\.(?:weight|bias))"),
     r"transformer_blocks.\2.mamba_scan\1.\3"),
    (r"mixins\.mamba_attn\.scan([12])_gating_list\.(\d+)\.gating_alpha",
     r"transformer_blocks.\2.scan\1_gating.gating_alpha"),
]]
_ADALN = re.compile(r"mixins\.adaln_layer\.adaLN_modulations\.(\d+)\.1\.(weight|bias)$")
# Before commit 4daf780 the fork had one Mamba pair shared by all layers ("mamba") or per-layer blocks
# without ScanBlock ("mambad"), composed differently with strided attention: not importable.
_OLD_MAMBA = re.compile(r"mixins\.mamba_attn\.(mamba_scan[12]\.|mamba_gating_alpha|mamba_(in|out)_projection"
                        r"|gating_module_list|mamba_scan[12]_list\.\d+\.(mixer|norm)\.)")


def _numpy_globals() -> list:
    """What np.random.get_state() pickles to, under numpy 2 and numpy 1 module names."""
    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    dtypes = [type(np.dtype(c)) for c in "?bBhHiIlLqQefdgFDGSU"]
    return [_reconstruct, (_reconstruct, "numpy.core.multiarray._reconstruct"),
            (_reconstruct, "numpy._core.multiarray._reconstruct"), np.ndarray, np.dtype, *dtypes]


def safe_torch_load(path: Path) -> object:
    """torch.load(weights_only=True) with the data-only types of SAT/DeepSpeed files allowed."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals([*_numpy_globals(), argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except FileNotFoundError:
        raise InputError(f"{path}: no such checkpoint file") from None
    except pickle.UnpicklingError as e:
        what = re.search(r"Unsupported global: GLOBAL (\S+)|Can only build .*?, but got (.+?)\n", str(e))
        if what:
            raise InputError(f"{path}: refused by torch.load(weights_only=True): it pickles "
                             f"{what.group(1) or what.group(2)}, which could run code when loaded; "
                             "re-save the state dict alone (a dict of tensors) from a trusted environment") \
                from None
        detail = re.search(r"WeightsUnpickler error: \s*(.+?)\n", str(e))
        raise InputError(f"{path}: unreadable torch checkpoint "
                         f"({detail.group(1) if detail else str(e).splitlines()[0]})") from None
    except Exception as e:  # noqa: BLE001 - corrupt or truncated files raise many types
        raise InputError(f"{path}: unreadable torch checkpoint ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None


def resolve_sat_file(path: str | Path) -> Path:
    """`path` as the .pt file: given directly, an iteration dir, or a dir whose `latest` names one."""
    path = Path(path)
    if path.is_file():
        return path
    if (path / MODEL_STATES).is_file():
        return path / MODEL_STATES
    latest = path / "latest"
    if latest.is_file():
        tag = latest.read_text().strip()
        target = path / tag / MODEL_STATES
        if not target.is_file():
            raise InputError(f"{latest}: names iteration {tag!r} but {target} does not exist")
        return target
    raise InputError(f"{path}: not a SAT checkpoint (expected a .pt file, a directory holding "
                     f"{MODEL_STATES}, or one with a `latest` file naming such a directory)")


def read_sat_module(path: str | Path) -> dict[str, torch.Tensor]:
    """The "module" state dict of a SAT/DeepSpeed model-states file (or a bare dict of tensors)."""
    file = resolve_sat_file(path)
    obj = safe_torch_load(file)
    sd = obj.get("module", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise InputError(f"{file}: no state dict of tensors under 'module' (found "
                         f"{sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__})")
    return sd


def _ignored(key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in IGNORED_SAT_KEYS)


def _check_positions(keys: set[str], cfg: DiTConfig, source: str) -> None:
    """Position kinds change no parameter shape, so a 2B/5B mix-up would load silently; catch it here."""
    if {"mixins.pos_embed.freqs_sin", "mixins.pos_embed.freqs_cos"} & keys and cfg.pos_embed != "rope":
        raise InputError(f"{source}: a RoPE (5B) checkpoint, but {PREFIX}.pos_embed={cfg.pos_embed}")
    if ("mixins.pos_embed.pos_embedding" in keys and cfg.pos_embed == "rope" and not cfg.learnable_pos_embed
            and "mixins.pos_embed.freqs_sin" not in keys):
        raise InputError(f"{source}: a sin-cos (2B) checkpoint, but {PREFIX}.pos_embed=rope")


def sat_to_longvid(sd: dict[str, torch.Tensor], cfg: DiTConfig,
                   source: str = "SAT checkpoint") -> tuple[dict[str, torch.Tensor], list[str]]:
    """(longvid state dict, ignored SAT keys). Keys of no known layout are passed through unchanged,
    so that loading reports them as unexpected."""
    prefixed = any(k.startswith(SAT_PREFIX) for k in sd)  # also accept the DiT's own, unprefixed dict
    inner = {k[len(SAT_PREFIX):] if prefixed and k.startswith(SAT_PREFIX) else k: k for k in sd}
    _check_positions(set(inner), cfg, source)
    out: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    for key, full in inner.items():
        value = sd[full]
        if key == "mixins.pos_embed.pos_embedding" and cfg.learnable_pos_embed:
            out["patch_embed.pos_embedding"] = value
        elif _ignored(key):
            ignored.append(full)
        elif m := _ADALN.match(key):
            # 12 chunks: video (shift, scale, gate) attn, video mlp, text attn, text mlp
            c = value.chunk(12, dim=0)
            i, kind = m.groups()
            out[f"transformer_blocks.{i}.norm1.linear.{kind}"] = torch.cat(c[0:3] + c[6:9])
            out[f"transformer_blocks.{i}.norm2.linear.{kind}"] = torch.cat(c[3:6] + c[9:12])
        elif _OLD_MAMBA.match(key):
            raise InputError(f"{source}: {full}: the fork's pre-4daf780 Mamba layout ('mamba'/'mambad', "
                             "shared or per-layer blocks with strided attention) is not supported; only the "
                             "MambaAttentionLayerMixin layout (mamba_scan{1,2}_list.N.block.*) is")
        else:
            out[_rename(key) or full] = value
    return out, ignored


def _rename(key: str) -> str | None:
    for pattern, repl in _RULES:
        if pattern.match(key):
            return pattern.sub(repl, key)
    return None


def load_sat(path: str | Path, cfg: DiTConfig,
             extra: tuple[str | Path, ...] = ()) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(longvid state dict, ignored SAT keys) of a SAT checkpoint; each `extra` checkpoint's tensors
    override same-named ones before mapping, like the fork's --load-extra."""
    sd = dict(read_sat_module(path))
    for more in extra:
        sd.update(read_sat_module(more))
    return sat_to_longvid(sd, cfg, source=str(path))
