# Config resolution, stage commands, path helpers and the shard checkpoint's aggregation. Rules stay
# declarative; every bit of logic they need lives here, named.
import json
import os
import re
import shlex
import sys
from pathlib import Path

from longvid import config as lvconfig
from longvid.io import InputError

ROOT = Path(workflow.basedir).parent

# Jobs run the longvid (and dvc) installed beside the Python that runs Snakemake - Slurm jobs rerun
# this file with it too - so `.venv/bin/snakemake` works without the venv on PATH, `srun` finds the
# same executable on every node, and the DAG and the jobs use the same code.
BIN = Path(sys.executable).parent
if not (BIN / "longvid").is_file():
    raise WorkflowError(
        f"longvid is not installed for {sys.executable} (no {BIN / 'longvid'}): "
        "run `make setup`, or `pip install -e .` with this Python"
    )
shell.prefix(f'set -euo pipefail; export PATH={shlex.quote(str(BIN))}:"$PATH"; ')

# Validate everything the default target needs before any job runs; errors name the key.
try:
    TOP = lvconfig.validate(config, "config.schema.yaml", "config")
    RESOLVED = lvconfig.resolve(config, ROOT)
except InputError as e:
    raise WorkflowError(f"invalid configuration: {e}")

_dataset_cache = dict(RESOLVED["datasets"])
_experiment_cache = dict(RESOLVED["experiments"])


# An experiment is one path component: results/samples/{experiment} is a directory output, which
# must not match results/samples/tiny/index.json as experiment "tiny/index.json".
wildcard_constraints:
    experiment=r"[^/]+",


def dataset_cfg(name):
    """Resolved config of any dataset: listed in config.yaml or only present in config/datasets/."""
    if name not in _dataset_cache:
        try:
            _dataset_cache[name] = lvconfig.dataset(
                name, TOP["datasets"].get(name), ROOT
            )
        except InputError as e:
            raise WorkflowError(str(e))
    return _dataset_cache[name]


def experiment_cfg(name):
    """Resolved config of any experiment: listed in config.yaml or only in config/experiments/."""
    if name not in _experiment_cache:
        try:
            _experiment_cache[name] = lvconfig.experiment(
                name, TOP["experiments"].get(name), ROOT
            )
        except InputError as e:
            raise WorkflowError(str(e))
    return _experiment_cache[name]


def stage_config(stage):
    """A params function: `--dataset|--experiment NAME --stage-config FILE`, handing the stage exactly
    the config it reads (longvid.config.stage_inputs) as resolved here, with every override.

    FILE is named by a digest of those inputs, so this param - Snakemake's rerun trigger - changes
    exactly when they do: a new `filter.min_motion` reruns filter (and, through its outputs, what
    follows), a new `sample.cfg` reruns sample, evaluate and report, and nothing else reruns.
    """

    def params(wildcards):
        if hasattr(wildcards, "experiment"):
            kind, name, cfg = (
                "experiment",
                wildcards.experiment,
                experiment_cfg(wildcards.experiment),
            )
        else:
            kind, name, cfg = (
                "dataset",
                wildcards.dataset,
                dataset_cfg(wildcards.dataset),
            )
        inputs = lvconfig.stage_inputs(kind, cfg, stage, TOP)
        path = lvconfig.write_stage_config(kind, name, stage, inputs, ROOT)
        return f"--{kind} {shlex.quote(name)} --stage-config {shlex.quote(str(path))}"

    return params


def workers(wildcards, threads):
    return TOP["workers"] or threads


def _name_regex(names):
    return (
        "|".join(map(re.escape, names)) or "(?!x)x"
    )  # an empty list must match nothing


ALL_DATASETS = sorted(p.stem for p in (ROOT / "config" / "datasets").glob("*.yaml"))


# A dataset whose version lives in DVC is pulled, never rebuilt (unless its dvc.pull is false). Only
# those with a .dvc file are resolved here: a broken config/datasets/*.yaml breaks only its targets.
def dvc_tracked(name):
    try:
        return lvconfig.dvc_tracked(name, TOP["datasets"].get(name), ROOT)
    except InputError as e:
        raise WorkflowError(str(e))


TRACKED_DATASETS = [d for d in ALL_DATASETS if dvc_tracked(d)]
BUILT_DATASETS = [d for d in ALL_DATASETS if d not in TRACKED_DATASETS]

DATASET_FILES = ["train.jsonl", "val.jsonl", "stats.json"]


def dataset_outputs(name):
    return [f"data/datasets/{name}/{f}" for f in DATASET_FILES]


def dataset_input(name):
    """What a consumer (encode, train, ...) depends on. A DVC-pulled dataset is `ancient`: the fresh
    mtimes `dvc pull` gives its files must not make everything downstream rerun."""
    files = dataset_outputs(name)
    return [ancient(f) for f in files] if name in TRACKED_DATASETS else files


def dataset_files(wildcards):
    return dataset_outputs(wildcards.dataset)


def push_flag(wildcards):
    return "--push" if dataset_cfg(wildcards.dataset)["dvc"]["push"] else ""


def shard_tables(table):
    """Input function: one `table` per shard of a dataset, known once the shard checkpoint ran."""

    def tables(wildcards):
        listing = checkpoints.shard.get(dataset=wildcards.dataset).output.shards
        shards = json.loads(Path(listing).read_text())["shards"]
        return [f"data/shards/{wildcards.dataset}/{s}/{table}" for s in shards]

    return tables


def experiment_dataset_dir(wildcards):
    return f"data/datasets/{experiment_cfg(wildcards.experiment)['dataset']}"


def experiment_dataset(wildcards):
    return dataset_input(experiment_cfg(wildcards.experiment)["dataset"])


def experiment_latents(wildcards):
    if experiment_cfg(wildcards.experiment)["data"]["latent_cache"]:
        return f"data/latents/{wildcards.experiment}/train.jsonl"
    return []


def experiment_prompts(wildcards):
    return experiment_cfg(wildcards.experiment)["sample"]["prompts"]


def train_retries(default=10):
    """LONGVID_SLURM_TRAIN_RETRIES: continuations a train run may take (one per time limit)."""
    value = os.environ.get("LONGVID_SLURM_TRAIN_RETRIES") or str(default)
    if not value.isdigit():
        raise WorkflowError(
            f"LONGVID_SLURM_TRAIN_RETRIES={value!r}: not a whole number of retries"
        )
    return int(value)


def launcher(wildcards, resources):
    """How GPU jobs start their processes - `srun` from the Slurm profile (one task per GPU, any
    number of nodes), or a single local process."""
    mpi = getattr(resources, "mpi", None)
    return f"{mpi} -n {resources.tasks}" if mpi else ""


def default_targets():
    datasets = [f for name in RESOLVED["datasets"] for f in dataset_outputs(name)]
    reports = [f"results/report/{name}.html" for name in RESOLVED["experiments"]]
    return datasets + reports
