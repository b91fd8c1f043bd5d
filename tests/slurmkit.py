"""The real one-node Slurm the Slurm tests run against, and how they drive Snakemake through it.

workflow/scripts/local-slurm.sh installs and starts it (root, apt; about 15 s the first time, 2 s
after): munged, slurmctld and slurmd with two fake GPUs, partition `debug`, no slurmdbd. Jobs really go
through sbatch, the plugin's nested `srun` and squeue status polls. tests/slurm/profile is layered
over the real profile for quick polls; the cluster's size comes from profiles/slurm's own variables.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
START_STOP = REPO / "workflow/scripts/local-slurm.sh"
TEST_PROFILE = REPO / "tests/slurm/profile"
# The GPU jobs fitted to the test node: 2 fake GPUs, one process and one CPU each, a little memory.
SMALL_NODE = {"LONGVID_SLURM_GPUS_PER_NODE": "2", "LONGVID_SLURM_CPUS_PER_GPU": "1",
              "LONGVID_SLURM_MEM_PER_GPU": "2000"}


def start_cluster(state: Path) -> SimpleNamespace:
    if os.geteuid() != 0:
        pytest.skip("the local Slurm cluster needs root (slurmd, /etc/slurm)")
    if not (shutil.which("slurmctld") or Path("/usr/sbin/slurmctld").exists() or shutil.which("apt-get")):
        pytest.skip("the local Slurm cluster needs Debian's slurm packages (apt-get)")
    start = subprocess.run(["bash", START_STOP, "start", state], check=False, capture_output=True, text=True,
                           timeout=300)
    assert start.returncode == 0, start.stdout + start.stderr
    cpus = int(subprocess.check_output(["sinfo", "-h", "-o", "%c"], text=True).split()[0])
    return SimpleNamespace(dir=state, cpus=cpus)


def stop_cluster(state: Path) -> None:
    subprocess.run(["bash", START_STOP, "stop", state], check=False, capture_output=True, timeout=120)


def set_cluster_env(monkeypatch, **extra: str) -> str:
    """The user's cluster facts, as profiles/slurm reads them; a fresh account names this test's jobs."""
    account = f"t{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("LONGVID_SLURM_ACCOUNT", account)
    monkeypatch.setenv("LONGVID_SLURM_PARTITION", "debug")
    for name in ("LONGVID_SLURM_GPU_PARTITION", "LONGVID_SLURM_GPU_MODEL", "LONGVID_SLURM_STATUS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in extra.items():
        monkeypatch.setenv(name, value)
    return account


def run_on_slurm(cwd: Path, *args: str, limit: int = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run(slurm_cmd(limit, *args), check=False, cwd=cwd, capture_output=True, text=True,
                          timeout=limit + 60)
    assert proc.returncode != 124, f"snakemake still running after {limit} s:\n{proc.stderr[-4000:]}"
    return proc


def slurm_cmd(limit: int, *args: str) -> list[str]:
    # SIGINT, not SIGTERM: only on SIGINT does Snakemake scancel its jobs before exiting.
    return ["timeout", "-s", "INT", "-k", "30", str(limit), "snakemake", *args,
            "--profile", str(REPO / "profiles/slurm"), "--profile", str(TEST_PROFILE)]


def jobs_of(account: str) -> dict[str, list[tuple[str, str, str]]]:
    """{rule: [(job id, state, partition), ...] in submission order} of the jobs submitted under
    `account` (squeue keeps finished jobs for the cluster's MinJobAge, 300 s)."""
    out = subprocess.check_output(["squeue", "--states=all", "-h", "-A", account, "-o", "%i|%k|%T|%P"],
                                  text=True)
    jobs: dict[str, list[tuple[str, str, str]]] = {}
    for line in sorted(out.splitlines(), key=lambda line: int(line.split("|")[0])):
        job, comment, state, partition = line.split("|")  # the plugin's comment: rule_<name>[_wildcards_...]
        jobs.setdefault(comment.removeprefix("rule_").split("_wildcards")[0], []).append((job, state, partition))
    return jobs
