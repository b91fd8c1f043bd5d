"""The cluster command's plan: `snakemake --profile profiles/slurm -n results/samples/5b_sft` gives the
GPU jobs the resources README.md documents, and the size variables reshape them (no Slurm needed)."""

import os
import re
import subprocess

import pytest
from conftest import REPO, copy_repo

TARGET = "results/samples/5b_sft"
METRICS = "results/eval/5b_sft/metrics.json"  # evaluate too
COLUMNS = {"nodes": "nodes", "GPUs": "gpu", "tasks": "tasks", "CPUs per GPU": "cpus_per_gpu",
           "memory (MB)": "mem_mb", "time (min)": "runtime", "signal": "slurm_extra"}


def documented() -> dict[str, dict[str, str]]:
    """README.md's table of GPU jobs: {rule: {resource: value}} (empty cells: not set)."""
    text = (REPO / "README.md").read_text()
    lines = re.search(r"^\| rule +\| nodes.*?(?=\n\n)", text, re.M | re.S)[0].splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    table = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        table[cells[0]] = {COLUMNS[h]: v for h, v in zip(header[1:], cells[1:]) if v}
    return table


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return copy_repo(tmp_path_factory.mktemp("plan") / "repo")


def plan(repo, monkeypatch, **env: str) -> dict[str, dict]:
    """{rule: {"resources": {...}, "shell": str}} of the dry run through profiles/slurm, with only
    `env` (and an account and partitions) of the LONGVID_SLURM_* variables set."""
    for name in [n for n in os.environ if n.startswith("LONGVID_SLURM_")]:
        monkeypatch.delenv(name)
    for name, value in {"LONGVID_SLURM_ACCOUNT": "myproject", "LONGVID_SLURM_PARTITION": "cpu",
                        "LONGVID_SLURM_GPU_PARTITION": "gpu", **env}.items():
        monkeypatch.setenv(name, value)
    proc = subprocess.run(["snakemake", "--profile", "profiles/slurm", "-n", TARGET, METRICS], cwd=repo,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = {}
    for block in re.split(r"^rule ", proc.stdout, flags=re.M)[1:]:
        rule = block.split(":")[0]
        resources = dict(kv.split("=", 1) for kv in re.search(r"resources: (.*)", block)[1].split(", "))
        shell = re.search(r"Shell command: (.*)", block)
        jobs[rule] = {"resources": resources, "shell": shell[1].strip() if shell else ""}
    return jobs


def test_the_gpu_jobs_are_the_documented_ones(repo, monkeypatch):
    table, jobs = documented(), plan(repo, monkeypatch)
    assert set(table) == {"encode", "train", "sample", "evaluate"}
    for rule, want in table.items():
        got = jobs[rule]["resources"]
        if "slurm_extra" in want:
            want["slurm_extra"] = f"--signal={want['slurm_extra']}"
        assert {k: got.get(k) for k in want} == want, rule
        assert got["slurm_partition"] == "gpu" and got["slurm_account"] == "myproject", rule
        if int(want.get("tasks", 1)) > 1:
            assert got["mpi"].split()[0] == "srun", rule
            assert re.match(rf"{got['mpi']} -n {want['tasks']} longvid {rule} ", jobs[rule]["shell"]), rule
    assert jobs["train"]["resources"]["mpi"] == "srun --wait=60"  # a crashed rank takes the others down
    assert jobs["fetch"]["resources"]["slurm_partition"] == "cpu" and "gpu" not in jobs["fetch"]["resources"]


@pytest.mark.parametrize("env,train,single", [
    ({"LONGVID_SLURM_TRAIN_NODES": "2"}, {"nodes": "2", "gpu": "16", "tasks": "16"}, False),
    ({"LONGVID_SLURM_GPUS_PER_NODE": "1", "LONGVID_SLURM_TRAIN_RUNTIME": "240",
      "LONGVID_SLURM_TRAIN_WARNING": "600"},
     {"nodes": "1", "gpu": "1", "tasks": "1", "runtime": "240", "slurm_extra": "--signal=USR1@600"}, True),
], ids=["2-nodes-x-8-gpus", "one-gpu"])
def test_site_variables_reshape_the_jobs(repo, monkeypatch, env, train, single):
    jobs = plan(repo, monkeypatch, **env)
    got = jobs["train"]["resources"]
    assert {k: got.get(k) for k in train} == train
    # One process in all: no mpi (the plugin refuses it with one task), the job's task is the trainer.
    assert ("mpi" not in got) == single
    launch = "" if single else f"{got['mpi']} -n {train['tasks']} "
    assert jobs["train"]["shell"].startswith(f"{launch}longvid train")
