# Config resolution, path helpers and the shard checkpoint's aggregation. Rules stay declarative;
# every bit of logic they need lives here, named.
import json
import re
import shlex
from pathlib import Path

from longvid import config as lvconfig
from longvid.io import InputError

ROOT = Path(workflow.basedir).parent

# Validate everything the default target needs before any job runs; errors name the key.
try:
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
                name, config["datasets"].get(name), ROOT
            )
        except InputError as e:
            raise WorkflowError(str(e))
    return _dataset_cache[name]


def experiment_cfg(name):
    """Resolved config of any experiment: listed in config.yaml or only in config/experiments/."""
    if name not in _experiment_cache:
        try:
            _experiment_cache[name] = lvconfig.experiment(
                name, config["experiments"].get(name), ROOT
            )
        except InputError as e:
            raise WorkflowError(str(e))
    return _experiment_cache[name]


def stage_params(stage):
    """A params function giving a dataset's `stage` config section as shell-quoted JSON.

    Passing the section as a param makes Snakemake rerun exactly the stages whose settings changed
    (and, through their outputs, everything downstream), and nothing else.
    """

    def params(wildcards):
        return shlex.quote(
            json.dumps(dataset_cfg(wildcards.dataset)[stage], sort_keys=True)
        )

    return params


def workers(wildcards, threads):
    return config.get("workers") or threads


def dvc_tracked(name):
    """A dataset whose version lives in DVC: pulled, never rebuilt (unless dvc.pull is false)."""
    return (
        dataset_cfg(name)["dvc"]["pull"]
        and (ROOT / "data" / "datasets" / f"{name}.dvc").exists()
    )


def _name_regex(names):
    return (
        "|".join(map(re.escape, names)) or "(?!x)x"
    )  # an empty list must match nothing


ALL_DATASETS = sorted(p.stem for p in (ROOT / "config" / "datasets").glob("*.yaml"))
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


# What each model stage reads of the experiment. Passing only that as the rule's param makes a change
# rerun exactly the stages that depend on it: a new sampling cfg reruns sample and what follows, not
# encode or train.
EXPERIMENT_SECTIONS = {
    "encode": lambda e: {
        "dataset": e["dataset"],
        "data": e["data"],
        "model": {k: e["model"][k] for k in ("vae", "text")},
    },
    "train": lambda e: {
        k: v for k, v in e.items() if k not in ("sample", "evaluate", "description")
    },
    "sample": lambda e: {
        k: v for k, v in e.items() if k not in ("evaluate", "description")
    },
    "evaluate": lambda e: {k: v for k, v in e.items() if k != "description"},
    "report": lambda e: e,
}


def experiment_params(stage):
    def params(wildcards):
        section = EXPERIMENT_SECTIONS[stage](experiment_cfg(wildcards.experiment))
        return shlex.quote(json.dumps(section, sort_keys=True))

    return params


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


def latents_flag(wildcards, input):
    return f"--latents {input.latents}" if input.latents else ""


def launcher(wildcards, resources):
    """How GPU jobs start their processes - `srun` from the Slurm profile (one task per GPU, any
    number of nodes), or a single local process."""
    mpi = getattr(resources, "mpi", None)
    return f"{mpi} -n {resources.tasks}" if mpi else ""


def default_targets():
    datasets = [f for name in RESOLVED["datasets"] for f in dataset_outputs(name)]
    reports = [f"results/report/{name}.html" for name in RESOLVED["experiments"]]
    return datasets + reports
