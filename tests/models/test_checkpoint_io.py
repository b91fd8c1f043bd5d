"""Checkpoint import (SAT, diffusers, longvid) and export (diffusers, LoRA/PEFT, longvid).

SAT checkpoints are written here from a diffusers model by the rules of the seed's HF converter run
backwards (seed-analysis §2.5), and from the seed's Mamba/LoRA key names (§2.2), in the released layout
(`latest` + `<iter>/mp_rank_00_model_states.pt`, state under "module", DeepSpeed's extras beside it).
Outputs are compared with diffusers' CogVideoXTransformer3DModel where it can hold the model.
"""

from __future__ import annotations

import argparse
import random
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import CogVideoXTransformer3DModel
from diffusers.loaders.lora_pipeline import CogVideoXLoraLoaderMixin
from diffusers.models.embeddings import get_3d_rotary_pos_embed
from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
from safetensors.torch import load_file, safe_open

from longvid import config as lv_config
from longvid.io import InputError
from longvid.models.checkpoint_io import export_diffusers, export_lora_peft, import_weights, merged_state_dict
from longvid.models.convert_diffusers import diffusers_config, diffusers_to_longvid, longvid_to_diffusers
from longvid.models.dit import DiT
from longvid.models.lora import add_lora
from longvid.models.regimes import DIT_LORA_TARGETS
from longvid.models.registry import make_config
from longvid.runtime import build_dit, build_encoders
from longvid.models.export import export_model, load_model

P = "model.diffusion_model."
KINDS = {"2b": {"pos_embed": "sincos", "mamba_d_model": 96},  # 2B: sin-cos, Mamba width adapters
         "5b": {"pos_embed": "rope"}}
DECOYS = {  # what released files hold beside the DiT's weights, all documented as ignored
    "2b": {P + "mixins.pos_embed.pos_embedding": torch.zeros(1, 16 + 5 * 16, 64)},
    "5b": {P + "mixins.pos_embed.freqs_sin": torch.zeros(13 * 16, 16),
           P + "mixins.pos_embed.freqs_cos": torch.ones(13 * 16, 16)},
}
SHARED_DECOYS = {"first_stage_model.encoder.conv_in.weight": torch.zeros(4, 3, 3, 3),
                 "conditioner.embedders.0.transformer.shared.weight": torch.zeros(8, 4)}


class NotData:  # pickled into a checkpoint: weights_only must refuse it
    pass


def cfg_of(kind: str, **kw):
    return make_config("tiny", norm_eps=1e-6, **{**KINDS[kind], **kw})


def randomise(module: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return module.eval()


def random_diffusers(cfg) -> CogVideoXTransformer3DModel:
    torch.manual_seed(0)
    return randomise(CogVideoXTransformer3DModel(**diffusers_config(cfg.replace(mamba=False))))


def inputs(cfg, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, cfg.latent_frames, cfg.out_channels, cfg.latent_height, cfg.latent_width, generator=g)
    return x, torch.tensor([7, 901]), torch.randn(2, cfg.text_length, cfg.text_dim, generator=g)


@torch.no_grad()
def run(model, cfg):
    return model(*inputs(cfg))


@torch.no_grad()
def run_diffusers(ref, cfg):
    x, t, ctx = inputs(cfg)
    rot = None
    if cfg.pos_embed == "rope":
        gh, gw = cfg.latent_height // cfg.patch_size, cfg.latent_width // cfg.patch_size
        rot = get_3d_rotary_pos_embed(cfg.head_dim, ((0, 0), (gh, gw)), (gh, gw), x.shape[1],
                                      theta=cfg.rope_theta)
    return ref(x, ctx, t, image_rotary_emb=rot, return_dict=False)[0]


# ---- writing SAT checkpoints ---------------------------------------------------------------------
def sat_from_diffusers(sd: dict, num_layers: int, lora: bool = False) -> dict:
    """The seed's HF converter (convert_weight_sat2hf) backwards; every diffusers key must be used."""
    sd = dict(sd)
    orig = "original." if lora else ""  # SAT's LoraLinear keeps the wrapped layer under `original`
    out = {}
    for i in range(num_layers):
        b, L = f"transformer_blocks.{i}.", f"{P}transformer.layers.{i}."
        for kind in ("weight", "bias"):
            out[f"{L}attention.query_key_value.{orig}{kind}"] = torch.cat(
                [sd.pop(f"{b}attn1.to_{x}.{kind}") for x in "qkv"])
            out[f"{L}attention.dense.{orig}{kind}"] = sd.pop(f"{b}attn1.to_out.0.{kind}")
            for theirs, ours in [("norm1.norm", "input_layernorm"),
                                 ("norm2.norm", "post_attention_layernorm"),
                                 ("ff.net.0.proj", "mlp.dense_h_to_4h"), ("ff.net.2", "mlp.dense_4h_to_h")]:
                out[f"{L}{ours}.{kind}"] = sd.pop(f"{b}{theirs}.{kind}")
            A = f"{P}mixins.adaln_layer."
            out[f"{A}query_layernorm_list.{i}.{kind}"] = sd.pop(f"{b}attn1.norm_q.{kind}")
            out[f"{A}key_layernorm_list.{i}.{kind}"] = sd.pop(f"{b}attn1.norm_k.{kind}")
            # diffusers norm1 = [video | text] (shift, scale, gate) of attention, norm2 of the MLP
            n1, n2 = sd.pop(f"{b}norm1.linear.{kind}").chunk(2), sd.pop(f"{b}norm2.linear.{kind}").chunk(2)
            out[f"{A}adaLN_modulations.{i}.1.{kind}"] = torch.cat([n1[0], n2[0], n1[1], n2[1]])
    for theirs, ours in [("norm_final", "transformer.final_layernorm"),
                         ("norm_out.norm", "mixins.final_layer.norm_final"),
                         ("norm_out.linear", "mixins.final_layer.adaLN_modulation.1"),
                         ("proj_out", "mixins.final_layer.linear"),
                         ("time_embedding.linear_1", "time_embed.0"),
                         ("time_embedding.linear_2", "time_embed.2"),
                         ("patch_embed.proj", "mixins.patch_embed.proj"),
                         ("patch_embed.text_proj", "mixins.patch_embed.text_proj")]:
        for kind in ("weight", "bias"):
            out[f"{P}{ours}.{kind}"] = sd.pop(f"{theirs}.{kind}")
    if "patch_embed.pos_embedding" in sd:  # 5B-I2V's learnable embedding
        out[P + "mixins.pos_embed.pos_embedding"] = sd.pop("patch_embed.pos_embedding")
    assert not sd, f"diffusers keys the SAT writer does not cover: {sorted(sd)}"
    return out


def sat_mamba(model: DiT) -> dict:
    """The fork's HEAD MambaAttentionLayerMixin names (seed-analysis §2.2)."""
    out = {}
    for k, v in model.state_dict().items():
        if m := re.fullmatch(r"transformer_blocks\.(\d+)\.mamba_scan([12])\.(.+)", k):
            out[f"{P}mixins.mamba_attn.mamba_scan{m[2]}_list.{m[1]}.{m[3]}"] = v
        elif m := re.fullmatch(r"transformer_blocks\.(\d+)\.scan([12])_gating\.gating_alpha", k):
            out[f"{P}mixins.mamba_attn.scan{m[2]}_gating_list.{m[1]}.gating_alpha"] = v
    return out


def sat_lora(model: DiT) -> dict:
    """SAT LoraMixin: matrix_A.p (r x in) / matrix_B.p (out/3 x r) per q/k/v partition, one pair on dense."""
    out = {}
    for i, blk in enumerate(model.transformer_blocks):
        L = f"{P}transformer.layers.{i}.attention."
        qkv, dense = blk.attn1.to_qkv, blk.attn1.to_out
        for p in range(3):
            out[f"{L}query_key_value.matrix_A.{p}"] = qkv.lora_A[p].weight.detach()
            out[f"{L}query_key_value.matrix_B.{p}"] = qkv.lora_B[p].weight.detach()
        out[f"{L}dense.matrix_A.0"] = dense.lora_A.weight.detach()
        out[f"{L}dense.matrix_B.0"] = dense.lora_B.weight.detach()
    return out


def sat_from_longvid(model: DiT, lora: bool) -> dict:
    base = {k: v for k, v in model.state_dict().items()
            if ".lora_" not in k and "mamba" not in k and "gating" not in k}
    return sat_from_diffusers(longvid_to_diffusers(base), model.config.num_layers, lora=lora)


def write_sat(root: Path, module: dict, iteration: int = 1000) -> Path:
    """Released/DeepSpeed layout, with the non-tensor extras DeepSpeed and the fork store."""
    (root / str(iteration)).mkdir(parents=True)
    torch.save({"module": module, "iteration": iteration, "np_rng_state": np.random.get_state(),
                "random_rng_state": random.getstate(), "torch_rng_state": torch.get_rng_state(),
                "args": argparse.Namespace(mode="finetune", lr=1e-4), "ds_version": "0.14.4",
                "param_shapes": [OrderedDict((k, v.shape) for k, v in list(module.items())[:3])]},
               root / str(iteration) / "mp_rank_00_model_states.pt")
    (root / "latest").write_text(f"{iteration}\n")
    return root


def hybrid_with_lora(kind: str, seed: int = 0) -> DiT:
    torch.manual_seed(seed)
    model = DiT(cfg_of(kind, mamba=True))
    add_lora(model, DIT_LORA_TARGETS, rank=4, alpha=1.0)
    return randomise(model, seed)  # gates and LoRA B non-zero: Mamba and adapters both matter


# ---- SAT import ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_released_sat_checkpoint_into_hybrid_model_matches_diffusers(kind, tmp_path):
    cfg = cfg_of(kind, mamba=True)
    ref = random_diffusers(cfg)
    module = {**sat_from_diffusers(ref.state_dict(), cfg.num_layers), **DECOYS[kind], **SHARED_DECOYS}
    ckpt = write_sat(tmp_path / "transformer", module)
    model = DiT(cfg)
    result = import_weights(model, "sat", ckpt)
    # documented: Mamba layers keep their identity init, SAT's position tables and VAE/T5 are skipped
    assert result.missing == sorted(k for k in model.state_dict() if "mamba_scan" in k or "_gating." in k)
    assert result.missing and result.unexpected == sorted([*DECOYS[kind], *SHARED_DECOYS])
    want, got = run_diffusers(ref, cfg), run(model, cfg)
    assert want.abs().max() > 0.5 and (want - got).abs().max().item() <= 1e-5
    # the iteration directory and the file itself name the same checkpoint
    for path in (ckpt / "1000", ckpt / "1000" / "mp_rank_00_model_states.pt"):
        other = DiT(cfg)
        import_weights(other, "sat", path)
        assert torch.equal(run(other, cfg), got)


@pytest.mark.parametrize("kind", KINDS)
def test_sat_lora_and_mamba_keys_load_exactly(kind, tmp_path):
    src = hybrid_with_lora(kind)
    module = {**sat_from_longvid(src, lora=True), **sat_lora(src), **sat_mamba(src)}
    names = {k.split("mamba_scan1_list.0.")[1] for k in module if "mamba_scan1_list.0." in k}
    adapters = {"in_projection.weight", "in_projection.bias", "out_projection.weight", "out_projection.bias"}
    mixer = {"in_proj.weight", "conv1d.weight", "conv1d.bias", "dt_bias", "A_log", "D", "norm.weight",
             "out_proj.weight"}
    assert names == ({"block.norm.weight", "block.norm.bias"} | {f"block.mixer.{n}" for n in mixer}
                     | (adapters if kind == "2b" else set()))
    ckpt = write_sat(tmp_path / "run", module, iteration=300)

    target = DiT(cfg_of(kind, mamba=True))
    add_lora(target, DIT_LORA_TARGETS, rank=4, alpha=1.0)
    assert import_weights(target, "sat", ckpt) == ([], [])
    theirs = src.state_dict()
    for k, v in target.state_dict().items():
        assert torch.equal(v, theirs[k]), k
    want = run(src, src.config)
    assert torch.equal(run(target, src.config), want)

    # a model without adapters gets the LoRA merged (SAT scaling alpha/r, alpha = 1)
    plain = DiT(cfg_of(kind, mamba=True))
    assert import_weights(plain, "sat", ckpt) == ([], [])
    assert (run(plain, src.config) - want).abs().max().item() <= 1e-5

    # --load-extra: base weights from one checkpoint, a LoRA+Mamba-only (exclude_frozen) one laid over it
    base = write_sat(tmp_path / "base", sat_from_longvid(src, lora=False))
    extra = write_sat(tmp_path / "extra", {**sat_lora(src), **sat_mamba(src)})
    again = DiT(cfg_of(kind, mamba=True))
    add_lora(again, DIT_LORA_TARGETS, rank=4, alpha=1.0)
    import_weights(again, "sat", base, extra=(extra,))
    assert torch.equal(run(again, src.config), want)


def test_i2v_learnable_position_embedding_is_loaded_not_ignored(tmp_path):
    cfg = cfg_of("5b", learnable_pos_embed=True, in_channels=32)
    src = randomise(DiT(cfg))
    ckpt = write_sat(tmp_path / "i2v", {**sat_from_longvid(src, lora=False), **DECOYS["5b"]})
    model = DiT(cfg)
    assert import_weights(model, "sat", ckpt) == ([], sorted(DECOYS["5b"]))
    assert torch.equal(model.patch_embed.pos_embedding, src.patch_embed.pos_embedding)
    theirs = src.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in model.state_dict().items())


def test_keys_outside_the_documented_lists_are_errors(tmp_path):
    cfg = cfg_of("5b", mamba=True)
    src = randomise(DiT(cfg))
    good = {**sat_from_longvid(src, lora=False), **sat_mamba(src)}

    def attempt(module, model_cfg=cfg, name="x"):
        return import_weights(DiT(model_cfg), "sat", write_sat(tmp_path / name, module))

    with pytest.raises(InputError, match=r"1 unexpected keys \[model\.diffusion_model\.mixins\.extra\."):
        attempt({**good, P + "mixins.extra.weight": torch.zeros(1)}, name="a")
    dropped = P + "transformer.layers.1.mlp.dense_h_to_4h.weight"
    with pytest.raises(InputError, match=r"1 missing keys \[transformer_blocks\.1\.ff\.fc_in\.weight\]"):
        attempt({k: v for k, v in good.items() if k != dropped}, name="b")
    partial_mamba = {k: v for k, v in good.items() if "scan2_gating_list.0" not in k}
    with pytest.raises(InputError, match=r"missing keys \[transformer_blocks\.0\.scan2_gating\.gating_alpha"):
        attempt(partial_mamba, name="c")
    with pytest.raises(InputError, match="pre-4daf780 Mamba layout"):
        attempt({**good, P + "mixins.mamba_attn.mamba_gating_alpha": torch.zeros(64)}, name="d")
    with pytest.raises(InputError, match="RoPE .5B. checkpoint, but model.pos_embed=sincos"):
        attempt({**good, **DECOYS["5b"]}, cfg_of("2b", mamba=True, mamba_d_model=0), name="e")
    with pytest.raises(InputError, match=r"text_proj\.weight has shape \(64, 32\), the model's is \(64, 48"):
        attempt(good, cfg.replace(text_dim=48), name="f")


def test_unsafe_or_unreadable_files_are_clear_errors(tmp_path):
    cfg = cfg_of("5b")
    module = sat_from_longvid(DiT(cfg), lora=False)
    (tmp_path / "pickled").mkdir()
    bad = tmp_path / "pickled" / "mp_rank_00_model_states.pt"
    torch.save({"module": module, "hook": NotData()}, bad)
    refused = rf"{re.escape(str(bad))}: refused by torch.load\(weights_only=True\): it pickles \S*NotData"
    with pytest.raises(InputError, match=refused):
        import_weights(DiT(cfg), "sat", tmp_path / "pickled")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file at all")
    with pytest.raises(InputError, match=rf"{re.escape(str(junk))}: unreadable torch checkpoint"):
        import_weights(DiT(cfg), "sat", junk)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty: not a SAT checkpoint"):
        import_weights(DiT(cfg), "sat", tmp_path / "empty")
    (tmp_path / "empty" / "latest").write_text("release")
    with pytest.raises(InputError, match="names iteration 'release' but .* does not exist"):
        import_weights(DiT(cfg), "sat", tmp_path / "empty")
    with pytest.raises(InputError, match="model.init.format='ckpt'"):
        import_weights(DiT(cfg), "ckpt", tmp_path)


# ---- longvid and diffusers formats ---------------------------------------------------------------
def test_longvid_export_import_round_trip_is_exact(tmp_path):
    cfg = cfg_of("2b", mamba=True, num_frames=49, attention="window", attn_prefix_frames=1, attn_window=4)
    src = randomise(DiT(cfg))
    out = export_model(src, {"name": "test"}, tmp_path / "export", step=3)
    fresh = DiT(cfg)
    assert import_weights(fresh, "longvid", out) == ([], [])
    theirs = src.state_dict()
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, theirs[k]), k
    loaded, meta = load_model(out)
    assert meta["step"] == 3
    want = run(src, cfg)
    assert torch.equal(run(fresh, cfg), want) and torch.equal(run(loaded, cfg), want)


@pytest.mark.parametrize("kind", KINDS)
def test_diffusers_export_loads_in_diffusers_and_back(kind, tmp_path):
    cfg = cfg_of(kind)
    model = DiT(cfg)
    model.load_state_dict(diffusers_to_longvid(random_diffusers(cfg).state_dict()))
    add_lora(model, DIT_LORA_TARGETS, rank=4, alpha=1.0)
    randomise(model, seed=3, scale=0.05)
    want = run(model, cfg)
    out = export_diffusers(model, tmp_path / "transformer")
    theirs = CogVideoXTransformer3DModel.from_pretrained(out).eval()
    assert (run_diffusers(theirs, cfg) - want).abs().max().item() <= 1e-5
    back = DiT(cfg)
    assert import_weights(back, "diffusers", tmp_path) == ([], [])  # a pipeline dir: finds transformer/
    merged = merged_state_dict(model)
    assert all(torch.equal(v, merged[k]) for k, v in back.state_dict().items())


def test_diffusers_export_refuses_what_diffusers_cannot_hold(tmp_path):
    cfg = cfg_of("5b", mamba=True, num_frames=49, attention="window", attn_prefix_frames=1, attn_window=4)
    with pytest.raises(InputError, match=r"model\.mamba=true .*; model\.attention=window .*export_model"):
        export_diffusers(DiT(cfg), tmp_path)
    with pytest.raises(InputError, match="no LoRA adapters"):
        export_lora_peft(DiT(cfg), tmp_path)
    assert not list(tmp_path.iterdir())


def test_lora_export_loads_with_diffusers_and_peft(tmp_path):
    cfg = cfg_of("5b")
    ref = random_diffusers(cfg)
    model = DiT(cfg)
    model.load_state_dict(diffusers_to_longvid(ref.state_dict()))
    add_lora(model, DIT_LORA_TARGETS, rank=4, alpha=2.0)  # scaling 1/2: the alpha must travel too
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name:
                p.add_(torch.randn_like(p) * 0.2)
    want = run(model, cfg)
    base_out = run_diffusers(ref, cfg)
    assert (want - base_out).abs().max() > 1e-2  # the adapters change the output

    out = export_lora_peft(model, tmp_path / "lora")
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "transformer.transformer_blocks.1.attn1.to_v.lora_A.weight" in keys
    assert "transformer.transformer_blocks.0.attn1.to_out.0.lora_B.weight" in keys
    assert len(keys) == cfg.num_layers * 4 * 2

    # diffusers' CogVideoX pipeline path: CogVideoXPipeline.load_lora_weights(out) runs these two
    via_diffusers = random_diffusers(cfg)
    state, meta = CogVideoXLoraLoaderMixin.lora_state_dict(out, return_lora_metadata=True)
    CogVideoXLoraLoaderMixin.load_lora_into_transformer(state, transformer=via_diffusers, metadata=meta)
    assert (run_diffusers(via_diffusers, cfg) - want).abs().max().item() <= 1e-5

    # PEFT alone: adapter_config.json + the weights
    via_peft = random_diffusers(cfg)
    inject_adapter_in_model(LoraConfig.from_pretrained(str(out)), via_peft)
    weights = {k.removeprefix("transformer."): v
               for k, v in load_file(out / "adapter_model.safetensors").items()}
    result = set_peft_model_state_dict(via_peft, weights)
    assert not result.unexpected_keys
    assert (run_diffusers(via_peft, cfg) - want).abs().max().item() <= 1e-5


def test_experiment_model_init_loads_weights(tmp_path):
    exp = lv_config.experiment("tiny", {"data": {"num_frames": 17}})
    enc = build_encoders(exp)
    src = randomise(build_dit(exp, enc, seed=0))
    export_model(src, exp, tmp_path / "final", step=1)
    exp["model"]["init"] = {"format": "longvid", "path": str(tmp_path / "final")}
    model = build_dit(exp, enc, seed=5)
    theirs = src.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in model.state_dict().items())
