"""profiles/slurm against a real one-node Slurm cluster (tests/slurmkit.py): the job shape of each kind
of rule, failures reported, and the data half giving the local profile's dataset."""

import json
import subprocess

import pytest
import yte
from conftest import REPO, copy_repo
from slurmkit import jobs_of, run_on_slurm, set_cluster_env

pytestmark = pytest.mark.slow

TINY = "tests/data/tiny-config.yaml"
DATA = [f"data/datasets/shapes/{name}" for name in ("train.jsonl", "val.jsonl", "stats.json")]


@pytest.fixture
def cluster_env(monkeypatch):
    return set_cluster_env(monkeypatch)


def states(account: str) -> dict[str, tuple[str, str]]:
    """{rule: (state, partition)} of a run where every rule was one job."""
    jobs = jobs_of(account)
    assert all(len(j) == 1 for j in jobs.values()), jobs
    return {rule: j[0][1:] for rule, j in jobs.items()}


def profile_resources(rule: str) -> dict:
    profile = yte.process_yaml((REPO / "profiles/slurm/config.yaml").open(), require_use_yte=True)
    return profile["set-resources"][rule]


HARNESS = '''
rule all:
    input: "b.txt", "gpu.txt", "never.txt", "rank_died.txt"

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

rule rank_dies:
    output: "rank_died.txt"
    resources: GPU_RESOURCES
    shell: "{resources.mpi} -n {resources.tasks} sh -c '[ $SLURM_PROCID = 0 ] && exit 3; sleep 600'; touch {output}"

rule fail:
    output: "never.txt"
    shell: "echo boom >&2; exit 3"
'''


def test_jobs_on_slurm_failures_reported_train_gets_a_task_per_gpu(slurm, cluster_env, tmp_path):
    # The profile's train job shape (srun launcher, one task per GPU, preemption signal), shrunk to the
    # 2 fake GPUs and the CPUs of the test node.
    train = {**profile_resources("train"), "gpu": 2, "tasks": 2, "cpus_per_gpu": 1, "mem_mb": 1000,
             "runtime": 5}
    assert train["mpi"].split()[0] == "srun" and train["tasks_per_gpu"] == 1 and train["slurm_partition"] == "debug"
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
    # rank 0 died: srun ended rank 1's sleep a minute later (`srun --wait`), not the 5 min time limit
    assert "Error in rule rank_dies" in log and not (tmp_path / "rank_died.txt").exists()
    assert not (tmp_path / "never.txt").exists()
    assert states(cluster_env) == {
        "a": ("COMPLETED", "debug"), "b": ("COMPLETED", "debug"),
        "gpu_tasks": ("COMPLETED", "debug"), "fail": ("FAILED", "debug"), "rank_dies": ("FAILED", "debug")}


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
    assert states(cluster_env) == {rule: ("COMPLETED", "debug")
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


def test_a_data_job_retried_after_running_out_of_memory_asks_for_twice_the_memory(slurm, cluster_env, tmp_path):
    # A rule named like the profile's `fetch` gets its set-resources; attempt 1 plays an OOM kill.
    assert str(profile_resources("fetch")["mem_mb"]).replace(" ", "") == "8000*attempt"
    (tmp_path / "Snakefile").write_text(
        'rule fetch:\n    output: "done.txt"\n    threads: 1\n'
        '    shell: "mem=$(squeue -h -j $SLURM_JOB_ID -o %m); echo $mem >> memory.txt; '
        '[ $mem = 16000M ] || exit 137; touch {output}"\n')
    # --retries: the test profile turns the profile's retry off for the other tests
    proc = run_on_slurm(tmp_path, "--max-threads", str(slurm.cpus), "--retries", "1")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert (tmp_path / "memory.txt").read_text().split() == ["8000M", "16000M"]  # what Slurm gave each attempt
    assert [state for _, state, _ in jobs_of(cluster_env)["fetch"]] == ["FAILED", "COMPLETED"]
