"""The whole default DAG (data half + encode/train/sample/evaluate/report) through real Snakemake."""

import json

import pytest

from conftest import snakemake
from test_workflow import TINY, job_counts

pytestmark = pytest.mark.slow

EXP = "tests/data/tiny-experiment.yaml"


def test_default_target_end_to_end_then_only_sampling_reruns(repo_copy):
    snakemake(repo_copy, "--configfile", TINY, EXP, timeout=1200)
    index = json.loads((repo_copy / "results/samples/tiny/index.json").read_text())
    assert len(index["samples"]) == 4
    for sample in index["samples"]:
        assert (repo_copy / "results/samples/tiny" / sample["video"]).stat().st_size > 0
    assert (repo_copy / "results/train/tiny/final/model.safetensors").exists()
    assert job_counts(snakemake(repo_copy, "-n", "--configfile", TINY, EXP).stdout) == {}

    tweak = repo_copy / "tweak.yaml"
    tweak.write_text("experiments: {tiny: {sample: {cfg: 1.5}}}\n")
    downstream = job_counts(snakemake(repo_copy, "-n", "--configfile", TINY, EXP, str(tweak)).stdout)
    assert downstream == {"sample": 1, "all": 1}
