"""profiles/slurm against a real one-node Slurm cluster (munged, slurmctld, slurmd) started for the session.

workflow/scripts/local-slurm.sh installs and starts it (root, apt; about 15 s the first time, 2 s after):
jobs really go through sbatch, the plugin's nested `srun` and squeue status polls.
tests/slurm/profile is layered over the real profile: squeue status (this cluster has no slurmdbd,
so sacct would make Snakemake wait forever) and quick polls.
"""

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import yte
from conftest import REPO, copy_repo

pytestmark = pytest.mark.slow

START_STOP = REPO / "workflow/scripts/local-slurm.sh"
TEST_PROFILE = REPO / "tests/slurm/profile"
TINY = "tests/data/tiny-config.yaml"
DATA = [f"data/datasets/shapes/{name}" for name in ("train.jsonl", "val.jsonl", "stats.json")]


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the local Slurm cluster needs root (slurmd, /etc/slurm)")
    if not (shutil.which("slurmctld") or shutil.which("apt-get")):
        pytest.skip("the local Slurm cluster needs Debian's slurm packages (apt-get)")
    state = tmp_path_factory.mktemp("slurm")
    start = subprocess.run(["bash", START_STOP, "start", state], check=False, capture_output=True, text=True,
                           timeout=300)
    assert start.returncode == 0, start.stdout + start.stderr
    cpus = int(subprocess.check_output(["sinfo", "-h", "-o", "%c"], text=True).split()[0])
    yield SimpleNamespace(dir=state, cpus=cpus)
    subprocess.run(["bash", START_STOP, "stop", state], check=False, capture_output=True, timeout=120)


@pytest.fixture
def cluster_env(monkeypatch):
    """The user's cluster facts, as profiles/slurm reads them; a fresh account names this test's jobs."""
    account = f"t{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("LONGVID_SLURM_ACCOUNT", account)
    monkeypatch.setenv("LONGVID_SLURM_PARTITION", "debug")
    monkeypatch.delenv("LONGVID_SLURM_GPU_PARTITION", raising=False)
    monkeypatch.delenv("LONGVID_SLURM_GPU_MODEL", raising=False)
    return account


def run_on_slurm(cwd: Path, *args: str, limit: int = 240) -> subprocess.CompletedProcess:
    # SIGINT, not SIGTERM: only on SIGINT does Snakemake scancel its jobs before exiting.
    cmd = ["timeout", "-s", "INT", "-k", "30", str(limit), "snakemake", *args,
           "--profile", str(REPO / "profiles/slurm"), "--profile", str(TEST_PROFILE)]
    proc = subprocess.run(cmd, check=False, cwd=cwd, capture_output=True, text=True, timeout=limit + 60)
    assert proc.returncode != 124, f"snakemake still running after {limit} s:\n{proc.stderr[-4000:]}"
    return proc


def jobs_of(account: str) -> dict[str, tuple[str, str]]:
    """{rule: (state, partition)} of the Slurm jobs submitted under `account` (squeue keeps them 300 s)."""
    out = subprocess.check_output(["squeue", "--states=all", "-h", "-A", account, "-o", "%k|%T|%P"],
                                  text=True)
    jobs = {}
    for line in out.splitlines():
        comment, state, partition = line.split("|")  # the plugin's comment: rule_<name>[_wildcards_...]
        jobs[comment.removeprefix("rule_").split("_wildcards")[0]] = (state, partition)
    return jobs


def profile_resources(rule: str) -> dict:
    profile = yte.process_yaml((REPO / "profiles/slurm/config.yaml").open(), require_use_yte=True)
    return profile["set-resources"][rule]


HARNESS = '''
rule all:
    input: "b.txt", "gpu.txt", "never.txt"

rule a:
    output: "a.txt"
    shell: "echo $SLURM_JOB_ID > {output}"

rule b:
    input: "a.txt"
    output: "b.txt"
    shell: "echo $SLURM_JOB_ID > {output}"

rule gpu_tasks:
    output: "gpu.txt"
    resources: GPU_RESOURCES
    shell: "{resources.mpi} -n {resources.tasks} sh -c 'echo $SLURM_PROCID $CUDA_VISIBLE_DEVICES' > {output}"

rule fail:
    output: "never.txt"
    shell: "echo boom >&2; exit 3"
'''


def test_jobs_on_slurm_failures_reported_train_gets_a_task_per_gpu(slurm, cluster_env, tmp_path):
    # The profile's train job shape (srun launcher, one task per GPU, preemption signal), shrunk to the
    # 2 fake GPUs and the CPUs of the test node.
    train = {**profile_resources("train"), "gpu": 2, "tasks": 2, "cpus_per_gpu": 1, "mem_mb": 1000,
             "runtime": 5}
    assert train["mpi"] == "srun" and train["tasks_per_gpu"] == 1 and train["slurm_partition"] == "debug"
    (tmp_path / "Snakefile").write_text(
        HARNESS.replace("GPU_RESOURCES", ", ".join(f"{k}={v!r}" for k, v in train.items())))

    proc = run_on_slurm(tmp_path, "--keep-going")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log[-4000:]
    a, b = (tmp_path / "a.txt").read_text().split(), (tmp_path / "b.txt").read_text().split()
    assert a[0].isdigit() and b[0].isdigit() and a != b, "each rule is its own Slurm job"
    tasks = sorted(line.split() for line in (tmp_path / "gpu.txt").read_text().splitlines())
    assert [t[0] for t in tasks] == ["0", "1"], tasks  # two srun tasks ...
    assert all(len(t) == 2 for t in tasks), f"a task saw no GPU: {tasks}"  # ... each seeing the job's
    assert {gpu for t in tasks for gpu in t[1].split(",")} == {"0", "1"}    # 2 GPUs (rank picks by LOCALID)

    assert "Error in rule fail" in log and "SLURM status is: 'FAILED'" in log
    assert not (tmp_path / "never.txt").exists()
    assert jobs_of(cluster_env) == {
        "a": ("COMPLETED", "debug"), "b": ("COMPLETED", "debug"),
        "gpu_tasks": ("COMPLETED", "debug"), "fail": ("FAILED", "debug")}


def test_data_half_on_slurm_gives_the_local_profiles_dataset(slurm, cluster_env, tmp_path):
    local, remote = copy_repo(tmp_path / "local"), copy_repo(tmp_path / "slurm")
    # The local reference run shares the 2 cores with the Slurm run, which mostly waits on polls.
    reference = subprocess.Popen(
        ["snakemake", *DATA, "--profile", "profiles/default", "--cores", "2", "--configfile", TINY],
        cwd=local, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # Threads become --cpus-per-task: no more than the test node has (rules ask for 4 to 8).
    proc = run_on_slurm(remote, *DATA, "--configfile", TINY, "--max-threads", str(slurm.cpus))
    reference_log = reference.communicate(timeout=300)[0]
    assert reference.returncode == 0, reference_log[-4000:]
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]

    # Everything but the local rules ran as Slurm jobs, in the partition and account from the environment.
    assert jobs_of(cluster_env) == {rule: ("COMPLETED", "debug")
                                    for rule in ("fetch", "probe", "split", "filter", "caption", "dataset")}
    for name in ("train.jsonl", "val.jsonl"):
        got = (remote / "data/datasets/shapes" / name).read_text()
        assert got == (local / "data/datasets/shapes" / name).read_text(), name
        assert str(tmp_path) not in got
    got_stats, want_stats = (json.loads((root / DATA[2]).read_text()) for root in (remote, local))
    assert got_stats == want_stats and got_stats["clips"]["train"] + got_stats["clips"]["val"] == 6
    clips = [{p.name: p.read_bytes() for p in (root / "data/datasets/shapes/clips").glob("*.mp4")}
             for root in (remote, local)]
    assert clips[0] == clips[1] and len(clips[0]) == 6, "the same clips, byte for byte"
