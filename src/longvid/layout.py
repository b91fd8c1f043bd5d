"""Where every stage's files live, relative to the working directory (the repository root).

The workflow's rules spell these paths out (so a rule reads top to bottom); a stage run by name
takes its defaults from here. tests/test_stage_cli.py runs stages by name in a workflow's tree, so a
path changed in one place and not the other fails there.
"""

from __future__ import annotations

from pathlib import Path

DATA, RESULTS = Path("data"), Path("results")
LATENT_CACHE = DATA / "latents" / "cache"


def raw_dir(dataset: str) -> Path:
    return DATA / "raw" / dataset


def manifest(dataset: str) -> Path:
    return raw_dir(dataset) / "manifest.jsonl"


def shards_dir(dataset: str) -> Path:
    return DATA / "shards" / dataset


def shards_json(dataset: str) -> Path:
    return shards_dir(dataset) / "shards.json"


def shard_table(dataset: str, shard: str, table: str) -> Path:
    """table: manifest, probe, clips, filtered, captioned."""
    return shards_dir(dataset) / shard / f"{table}.jsonl"


def clip_dir(dataset: str, shard: str) -> Path:
    return DATA / "clips" / dataset / shard


def dataset_dir(dataset: str) -> Path:
    return DATA / "datasets" / dataset


def latent_index(experiment: str) -> Path:
    return DATA / "latents" / experiment / "train.jsonl"


def run_dir(experiment: str) -> Path:
    return RESULTS / "train" / experiment


def model_dir(experiment: str) -> Path:
    return run_dir(experiment) / "final"


def samples_dir(experiment: str) -> Path:
    return RESULTS / "samples" / experiment


def sample_work_dir(experiment: str) -> Path:
    return RESULTS / "sample_runs" / experiment


def metrics(experiment: str) -> Path:
    return RESULTS / "eval" / experiment / "metrics.json"


def report(experiment: str) -> Path:
    return RESULTS / "report" / f"{experiment}.html"
