"""Configuration: config/config.yaml composes datasets and experiments by name.

`datasets: {shapes: {filter: {min_motion: 0.2}}}` means: load config/datasets/shapes.yaml, deep-merge
the overrides over it, validate against workflow/schemas/dataset.schema.yaml (which also fills in
defaults). Any unknown key or bad value fails here — before a job runs — with a message naming the
file and the key path. The Snakefile and `longvid config` both use this module.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import yaml

from longvid.io import InputError

def _find_root() -> Path:
    """The checkout holding config/ and workflow/: the working directory, else the source tree."""
    for cand in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (cand / "workflow" / "schemas").is_dir():
            return cand
    return Path.cwd()


ROOT = _find_root()


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


def validate(obj: dict, schema_name: str, where: str, root: Path = ROOT) -> dict:
    """Validate (and fill defaults into) a copy of `obj`; raise InputError naming the key."""
    schema = yaml.safe_load((Path(root) / "workflow" / "schemas" / schema_name).read_text())
    obj = copy.deepcopy(obj)
    errors = sorted(Validator(schema).iter_errors(obj), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        key = ".".join(str(p) for p in e.absolute_path) or "(top level)"
        if e.validator == "additionalProperties":
            extra = sorted(set(e.instance) - set(e.schema.get("properties", {})))
            key = ".".join([*map(str, e.absolute_path), extra[0]]) if extra else key
            raise InputError(f"{where}: {key}: unknown key")
        raise InputError(f"{where}: {key}: {e.message}")
    return obj


def resolve(config: dict, root: Path = ROOT) -> dict:
    """The validated top-level config with every listed dataset resolved."""
    config = validate(config, "config.schema.yaml", "config", root)
    config["datasets"] = {name: dataset(name, over, root) for name, over in config["datasets"].items()}
    config["experiments"] = {name: experiment(name, over, root) for name, over in config["experiments"].items()}
    return config


def dataset(name: str, overrides: dict | None = None, root: Path = ROOT) -> dict:
    path = Path(root) / "config" / "datasets" / f"{name}.yaml"
    if not path.exists():
        raise InputError(f"datasets.{name}: no such dataset (expected {path.relative_to(root)})")
    merged = deep_merge(load_yaml(path), overrides or {})
    where = f"config/datasets/{name}.yaml"
    cfg = validate(merged, "dataset.schema.yaml", where, root)
    if (cfg["filter"]["min_frames"] - 1) % 8:
        raise InputError(f"{where}: filter.min_frames: {cfg['filter']['min_frames']} is not 8N+1 (49, 145, ...)")
    return cfg


def experiment(name: str, overrides: dict | None = None, root: Path = ROOT) -> dict:
    path = Path(root) / "config" / "experiments" / f"{name}.yaml"
    if not path.exists():
        raise InputError(f"experiments.{name}: no such experiment (expected {path.relative_to(root)})")
    where = f"config/experiments/{name}.yaml"
    cfg = validate(deep_merge(load_yaml(path), overrides or {}), "experiment.schema.yaml", where, root)
    frames = cfg["data"]["num_frames"]
    if (frames - 1) % 8:
        raise InputError(f"{where}: data.num_frames: {frames} is not 8N+1 (49, 145, ...)")
    if not (Path(root) / "config" / "datasets" / f"{cfg['dataset']}.yaml").exists():
        raise InputError(f"{where}: dataset: no config/datasets/{cfg['dataset']}.yaml")
    return cfg


def add_arguments(p) -> None:
    p.add_argument("--configfile", type=Path, default=ROOT / "config" / "config.yaml")
    p.add_argument("--dataset", help="print only this dataset's resolved section")
    p.add_argument("--experiment", help="print only this experiment's resolved section")


def run(args) -> int:
    raw = load_yaml(args.configfile)
    cfg = resolve(raw)
    if args.dataset:
        out = dataset(args.dataset, raw.get("datasets", {}).get(args.dataset))
    elif args.experiment:
        out = experiment(args.experiment, raw.get("experiments", {}).get(args.experiment))
    else:
        out = cfg
    print(json.dumps(out, indent=2))
    return 0
