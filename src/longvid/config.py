"""Configuration: config/config.yaml composes datasets and experiments by name.

`datasets: {shapes: {filter: {min_motion: 0.2}}}` means: load config/datasets/shapes.yaml, deep-merge
the overrides over it, validate against longvid/schemas/dataset.schema.yaml (which also fills in
defaults). Any unknown key or bad value fails here — before a job runs — with a message naming the
file and the key path. The Snakefile and `longvid config` both use this module.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from pathlib import Path

import jsonschema
import yaml

from longvid.io import InputError
from longvid.models.config import check_num_frames  # torch-free

# The JSON-Schemas ship inside the package: stages validate from any working directory and from a
# non-editable install. `root` (the directory holding config/) is always the caller's to give.
SCHEMAS = Path(__file__).resolve().parent / "schemas"
ROOT = Path.cwd()


def load_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except yaml.YAMLError as e:
        raise InputError(f"{path}: invalid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping at the top level")
    return data


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _with_defaults(cls):
    """A validator class that also fills `default`s in, as Snakemake's validate() does."""
    set_props = cls.VALIDATORS["properties"]

    def properties(validator, props, instance, schema):
        if isinstance(instance, dict):
            for key, sub in props.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from set_props(validator, props, instance, schema)

    return jsonschema.validators.extend(cls, {"properties": properties})


Validator = _with_defaults(jsonschema.Draft202012Validator)


@functools.lru_cache(maxsize=None)
def _schema(name: str) -> dict:
    """A schema, parsed once per process (the Snakefile validates every dataset, experiment and stage)."""
    return yaml.safe_load((SCHEMAS / name).read_text())


def validate(obj: dict, schema_name: str, where: str) -> dict:
    """Validate (and fill defaults into) a copy of `obj`; raise InputError naming the key (prefixed
    with `where` unless it is empty)."""
    import difflib  # only to suggest the key a typo meant
    schema = _schema(schema_name)
    obj = copy.deepcopy(obj)
    errors = sorted(Validator(schema).iter_errors(obj), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        at = [*map(str, e.absolute_path)]
        key = ".".join(at) or "(top level)"
        prefix = f"{where}: " if where else ""
        known = e.schema.get("properties", {}) if isinstance(e.schema, dict) else {}
        if e.validator == "additionalProperties":
            extra = sorted(set(e.instance) - set(known))
            if extra:
                close = difflib.get_close_matches(extra[0], known, n=1)
                hint = f" (did you mean {close[0]}?)" if close else f" (known: {', '.join(known)})"
                raise InputError(f"{prefix}{'.'.join([*at, extra[0]])}: unknown key{hint}")
        if e.validator == "required":  # name the missing key itself, and what it is for
            # defaults are filled while validating, so a required key may be there by now, as null
            missing = next((k for k in e.validator_value if e.instance.get(k) is None), e.validator_value[0])
            what = known.get(missing, {}).get("description")
            raise InputError(f"{prefix}{'.'.join([*at, missing])}: required" + (f" ({what})" if what else ""))
        raise InputError(f"{prefix}{key}: {e.message}")
    return obj


def resolve(config: dict, root: Path = ROOT) -> dict:
    """The validated top-level config with every listed dataset resolved."""
    config = validate(config, "config.schema.yaml", "config")
    config["datasets"] = {name: dataset(name, over, root) for name, over in config["datasets"].items()}
    config["experiments"] = {name: experiment(name, over, root) for name, over in config["experiments"].items()}
    return config


def dataset(name: str, overrides: dict | None = None, root: Path = ROOT) -> dict:
    path = Path(root) / "config" / "datasets" / f"{name}.yaml"
    if not path.exists():
        raise InputError(f"datasets.{name}: no such dataset (expected {path.relative_to(root)})")
    merged = deep_merge(load_yaml(path), overrides or {})
    where = f"config/datasets/{name}.yaml"
    cfg = validate(merged, "dataset.schema.yaml", where)
    # no VAE is named here: the rule at the compression of every VAE in models/vae.py
    check_num_frames(cfg["filter"]["min_frames"], f"{where}: filter.min_frames")
    check_caption(cfg["caption"], where)
    return cfg


def check_caption(ccfg: dict, where: str) -> None:
    """What the caption schema cannot say: which keys need which backend (caught at dry-run time)."""
    backend = ccfg["backend"]
    if backend == "transformers" and not ccfg["transformers"]["path"]:
        raise InputError(f"{where}: caption.transformers.path: backend transformers needs a model directory")
    if ccfg["rewrite"] and backend != "openai":
        raise InputError(f"{where}: caption.rewrite: the rewrite pass needs backend openai (it is {backend!r})")


def source(section: dict) -> dict:
    """A `source` section checked against its type's keys, with that type's defaults filled in.
    Every fetch adapter starts with this, so the schema is the only place defaults live, also for a
    section handed to an adapter directly (tests, benches). Idempotent on a resolved section."""
    return validate({"source": section}, "dataset.schema.yaml", "")["source"]


def dvc_tracked(name: str, overrides: dict | None = None, root: Path = ROOT) -> bool:
    """Whether dataset `name` is pulled from DVC (data/datasets/<name>.dvc, and dvc.pull) instead of
    built. A dataset without a .dvc file answers False without its config being read, so a broken
    config/datasets/*.yaml breaks only the targets that use it; only one with a .dvc file is resolved
    (for its dvc.pull)."""
    if not (Path(root) / "data" / "datasets" / f"{name}.dvc").is_file():
        return False
    return bool(dataset(name, overrides, root)["dvc"]["pull"])


def experiment(name: str, overrides: dict | None = None, root: Path = ROOT) -> dict:
    path = Path(root) / "config" / "experiments" / f"{name}.yaml"
    if not path.exists():
        raise InputError(f"experiments.{name}: no such experiment (expected {path.relative_to(root)})")
    where = f"config/experiments/{name}.yaml"
    cfg = validate(deep_merge(load_yaml(path), overrides or {}), "experiment.schema.yaml", where)
    check_num_frames(cfg["data"]["num_frames"], f"{where}: data.num_frames",
                     VAE_GEOMETRY[cfg["model"]["vae"]["type"]][0])
    if not (Path(root) / "config" / "datasets" / f"{cfg['dataset']}.yaml").exists():
        raise InputError(f"{where}: dataset: no config/datasets/{cfg['dataset']}.yaml")
    check_model(cfg, where)
    return cfg


# DiTConfig keys that runtime.dit_config fills in from the experiment: an override of one would be
# silently replaced, so it is an error naming where the value comes from.
DERIVED_DIT_KEYS = {
    "num_frames": "data.num_frames", "latent_height": "data.height and the VAE's compression",
    "latent_width": "data.width and the VAE's compression", "in_channels": "the VAE (model.vae.type)",
    "out_channels": "the VAE (model.vae.type)", "text_dim": "the text encoder (model.text)",
    "text_length": "model.text.max_length", "gradient_checkpointing": "train.gradient_checkpointing",
}
# What the encoders give runtime.dit_config, known without building them (torch): (temporal and
# spatial compression, latent channels) per model.vae.type. runtime.build_encoders builds the
# weightless VAEs from this table; CogVideoX's is checked against its weights' config when built
# (runtime.Geometry.of). Every VAE here compresses 4x in time and 8x in space; latent channels are 3*4*8*8 (space_to_depth),
# 3 (pool) and 16 (CogVideoX's released VAEs, read from its config at train time); T5-v1.1-XXL is
# 4096 wide. Channels and text width only need to be positive here: no override rule involves them.
VAE_GEOMETRY = {"space_to_depth": (4, 8, 768), "pool": (4, 8, 3), "cogvideox": (4, 8, 16)}
T5_DIM = 4096


def check_model(cfg: dict, where: str) -> None:
    """Build the DiTConfig that training will build, from the experiment's data section and the
    encoders' known geometry, so that a misspelt or invalid `model.overrides` key fails when the
    config is resolved, not in `train` after fetch..encode ran. Torch-free (models.config/registry)."""
    import dataclasses
    import difflib
    import re

    from longvid.models.config import DiTConfig, check_frames
    from longvid.models.registry import make_config

    m, d = cfg["model"], cfg["data"]
    known = [f.name for f in dataclasses.fields(DiTConfig)]
    for key in m["overrides"]:
        if key in DERIVED_DIT_KEYS:
            raise InputError(f"{where}: model.overrides.{key}: derived from {DERIVED_DIT_KEYS[key]}; set that instead")
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else " (see longvid/models/config.py)"
            raise InputError(f"{where}: model.overrides.{key}: unknown key{hint}")
    if m["text"]["type"] == "t5" and m["text"]["tokenizer"] != "bytes":
        raise InputError(f"{where}: model.text.tokenizer={m['text']['tokenizer']}: only the tiny encoder "
                         "takes one (t5 uses the tokenizer in model.text.path)")
    t, s, channels = VAE_GEOMETRY[m["vae"]["type"]]
    if d["height"] % s or d["width"] % s:
        raise InputError(f"{where}: data.height/width: {d['height']}x{d['width']} is not a multiple of "
                         f"the VAE's {s}x spatial compression")
    derived = {"num_frames": d["num_frames"], "latent_height": d["height"] // s, "latent_width": d["width"] // s,
               "in_channels": channels * (2 if m["size"] == "5b-i2v" else 1), "out_channels": channels,
               "text_dim": m["text"]["dim"] if m["text"]["type"] == "tiny" else T5_DIM,
               "text_length": m["text"]["max_length"], "gradient_checkpointing": cfg["train"]["gradient_checkpointing"]}
    # DiTConfig names its keys model.<key>; name where each is set instead (a key left at the
    # size's value stays model.<key>)
    shown = {k: f"model.overrides.{k}" for k in m["overrides"]} | {
        "num_frames": "data.num_frames", "latent_height": f"data.height/{s}", "latent_width": f"data.width/{s}",
        "text_length": "model.text.max_length"}

    def fail(e: InputError, at: str = "") -> InputError:
        msg = re.sub(r"\bmodel\.(\w+)", lambda k: shown.get(k[1], k[0]), str(e))
        return InputError(f"{where}: {at}{msg}")

    try:
        dit = make_config(m["size"], **m["overrides"], **derived)
    except InputError as e:
        raise fail(e) from None
    for i, bucket in enumerate(d["buckets"] or []):  # each bucket's clip length meets the same rules
        try:
            check_frames(dit, (bucket[0] - 1) // t + 1)
        except InputError as e:
            raise fail(e, f"data.buckets[{i}] ({bucket[0]} frames): ") from None


# ---- what determines each stage ------------------------------------------------------------------
# Defined once, torch-free: the workflow's rerun trigger (a digest of these inputs) and the trainer's
# run identity both come from here. A stage is given only these sections, so it cannot read a key
# whose change would not rerun it.

# Bump a stage's number when what it writes changes meaning (a fixed algorithm, a new column): the
# workflow then reruns that stage, and through its outputs everything downstream, and nothing else.
# probe 2, split 2: rotated videos measured and cut at their displayed size. encode 2, train 2: PyAV
# and decord decode to RGB at source size, then share one resize-and-crop. dataset 2: caption token
# stats and the caption_tokens plot.
STAGE_VERSIONS = {"fetch": 1, "shard": 1, "probe": 2, "split": 2, "filter": 1, "caption": 1, "dataset": 2,
                  "encode": 2, "train": 2, "sample": 1, "evaluate": 1, "report": 1}

# Data stages: the dataset config sections each one reads (shard reads the top-level shard_size).
DATASET_STAGES = {"fetch": ("source",), "shard": (), "probe": (), "split": ("split",), "filter": ("filter",),
                  "caption": ("caption",), "dataset": ("dataset", "caption")}  # caption: the text encoder's limit

# Model stages: what of the experiment each reads. Later stages read everything earlier ones do.
EXPERIMENT_STAGES = {
    "encode": {"only": ("dataset", "data", "model.vae", "model.text")},
    "train": {"except": ("sample", "evaluate", "description")},
    "sample": {"except": ("evaluate", "description")},
    "evaluate": {"except": ("description",)},
    "report": {"except": ()},
}

# Training settings that do not change what a step computes: a run with only these changed resumes
# from its checkpoints (asking for more `steps` continues training rather than starting over).
RESUMABLE_TRAIN_KEYS = ("steps", "save_every", "keep_last", "log_every", "wandb_project")


def _pick(cfg: dict, dotted: str, out: dict) -> None:
    head, _, rest = dotted.partition(".")
    if not rest:
        out[head] = copy.deepcopy(cfg[head])
    else:
        _pick(cfg[head], rest, out.setdefault(head, {}))


def stage_inputs(kind: str, cfg: dict, stage: str, top: dict | None = None) -> dict:
    """The part of a resolved dataset (kind "dataset") or experiment config that `stage` reads, plus
    the stage's code version. `top`: the resolved config.yaml (for the shard size)."""
    if kind == "dataset":
        out = {k: copy.deepcopy(cfg[k]) for k in DATASET_STAGES[stage]}
        if stage == "shard":
            out["shard_size"] = (top or validate({}, "config.schema.yaml", "config"))["shard_size"]
    else:
        rule = EXPERIMENT_STAGES[stage]
        out = {}
        if "only" in rule:
            for key in rule["only"]:
                _pick(cfg, key, out)
        else:
            out = {k: copy.deepcopy(v) for k, v in cfg.items() if k not in rule["except"]}
    return {**out, "stage_version": STAGE_VERSIONS[stage]}


def training_identity(exp: dict) -> dict:
    """What determines a training trajectory: train's inputs without the resumable keys."""
    inputs = stage_inputs("experiment", exp, "train")
    inputs["train"] = {k: v for k, v in inputs["train"].items() if k not in RESUMABLE_TRAIN_KEYS}
    return inputs


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


# ---- handing a stage its config ------------------------------------------------------------------
# The workflow resolves config once (at parse time, with every --config/--configfile override) and
# writes each stage's inputs to a file named by their digest; the rule passes that file, and its
# path - changing exactly when the inputs change - is the rule's rerun trigger. A person runs the
# same stage by name instead (`longvid split --dataset shapes --shard s00000`), resolved here.

def stage_config_path(kind: str, name: str, stage: str, inputs: dict) -> Path:
    return Path("results") / "config" / f"{kind}s" / name / f"{stage}-{digest(inputs)}.json"


def write_stage_config(kind: str, name: str, stage: str, inputs: dict, root: Path = ROOT) -> Path:
    """Write a stage's inputs to their digest-named file (once: same name, same content)."""
    rel = stage_config_path(kind, name, stage, inputs)
    path = Path(root) / rel
    if not path.exists():
        from longvid.io import write_json

        write_json(path, {"kind": kind, "name": name, "stage": stage, "config": inputs})
    return rel


def read_stage_config(path: Path, kind: str, stage: str) -> dict:
    from longvid.io import json_object

    try:
        obj = json_object(Path(path).read_text(), str(path))
    except OSError as e:
        raise InputError(f"{path}: unreadable stage config ({e.strerror})") from None
    if obj.get("kind") != kind or obj.get("stage") != stage or not isinstance(obj.get("config"), dict):
        raise InputError(f"{path}: not a {kind} config of stage {stage} "
                         f"(it is {obj.get('kind')!r}/{obj.get('stage')!r})")
    return obj["config"]


def root_of(configfile: Path) -> Path:
    """The checkout a config file belongs to: the nearest directory above it holding config/ (for
    config/config.yaml the repository root; also for an override file such as tests/data/x.yaml)."""
    for parent in Path(configfile).resolve().parents:
        if (parent / "config" / "datasets").is_dir() or (parent / "config" / "experiments").is_dir():
            return parent
    return Path.cwd()


def by_name(kind: str, name: str, stage: str, configfiles: list[Path] | None = None) -> dict:
    """Resolve `stage`'s inputs for dataset or experiment `name` from config files, as the workflow
    does: config/{kind}s/<name>.yaml with the overrides of `configfiles`, deep-merged in order like
    Snakemake's --configfile (default: config/config.yaml)."""
    configfiles = [Path(f) for f in configfiles or [ROOT / "config" / "config.yaml"]]
    raw: dict = {}
    for f in configfiles:
        if f.exists() or f != ROOT / "config" / "config.yaml":
            raw = deep_merge(raw, load_yaml(f))
    top = validate(raw, "config.schema.yaml", str(configfiles[-1]))
    root = root_of(configfiles[0])
    if kind == "dataset":
        cfg = dataset(name, top["datasets"].get(name), root)
    else:
        cfg = experiment(name, top["experiments"].get(name), root)
    return stage_inputs(kind, cfg, stage, top)
