"""Scheduler outages on the real local Slurm (tests/slurmkit.py): workflow/scripts/slurm-bin/ and
longvid.slurm_retry retry what is transient, pass what is not straight through, and never submit a job
twice. Every outage is undone in a `finally`, so later tests find the cluster as it was."""

import math
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager

import pytest
from conftest import REPO
from slurmkit import jobs_of, set_cluster_env, slurm_cmd

pytestmark = pytest.mark.slow

SLURM_BIN = REPO / "workflow/scripts/slurm-bin"

HARNESS = f'''
include: "{REPO}/workflow/rules/slurm.smk"

rule all:
    input: "b.txt"

rule a:
    output: "a.txt"
    shell: "echo $SLURM_JOB_ID > {{output}}"

rule b:
    input: "a.txt"
    output: "b.txt"
    shell: "echo $SLURM_JOB_ID > {{output}}"
'''


def wrapped(tmp_path, **extra: str) -> dict:
    """The environment the workflow gives the plugin (rules/slurm.smk): slurm-bin first on PATH."""
    (tmp_path / "retry").mkdir(exist_ok=True)
    return {**os.environ, "PATH": f"{SLURM_BIN}{os.pathsep}{os.environ['PATH']}",
            "LONGVID_SLURM_PYTHON": sys.executable, "LONGVID_SLURM_RETRY_DIR": str(tmp_path / "retry"),
            **extra}


def retry_log(tmp_path) -> str:
    return (tmp_path / "retry/retries.log").read_text() if (tmp_path / "retry/retries.log").exists() else ""


@contextmanager
def paused_controller(cluster):
    """slurmctld stopped (SIGSTOP): connections queue unanswered, clients time out after MessageTimeout
    (10 s), and what was sent is processed once it runs again - a hung or overloaded controller."""
    pids = dict(line.split() for line in (cluster.dir / "run/pids").read_text().splitlines())
    pid = int(pids["slurmctld"])
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def submitted_at(account: str) -> dict[str, float]:
    """{rule: submit time (epoch s)} of the jobs under `account`."""
    out = subprocess.check_output(["squeue", "--states=all", "-h", "-A", account, "-o", "%k|%V"], text=True)
    return {comment.removeprefix("rule_"): time.mktime(time.strptime(at, "%Y-%m-%dT%H:%M:%S"))
            for comment, at in (line.split("|") for line in out.splitlines())}


@pytest.mark.parametrize("args,message", [
    (["-p", "nope"], "Invalid partition name specified"),
    (["--mem", "99999999"], "Requested node configuration is not available"),
])
def test_a_refusal_for_good_comes_back_at_once(slurm, tmp_path, args, message):
    env = wrapped(tmp_path)
    assert shutil.which("sbatch", path=env["PATH"]) == str(SLURM_BIN / "sbatch")
    cmd = ["sbatch", "--parsable", *args, "--wrap", "true"]
    start = time.monotonic()
    got = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    took = time.monotonic() - start
    real = subprocess.run(cmd, capture_output=True, text=True, timeout=60)  # Slurm's own sbatch
    assert (got.returncode, got.stdout, got.stderr) == (real.returncode, real.stdout, real.stderr)
    assert got.returncode == 1 and message in got.stderr
    assert took < 5 and retry_log(tmp_path) == ""


def test_a_run_waits_out_a_drained_partition(slurm, monkeypatch, tmp_path):
    account = set_cluster_env(monkeypatch)
    (tmp_path / "Snakefile").write_text(HARNESS)
    # A drained partition refuses every submission ("Required partition not available").
    subprocess.run(["scontrol", "update", "PartitionName=debug", "State=DRAIN"], check=True)
    try:
        run = subprocess.Popen(slurm_cmd(240), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
        time.sleep(20)
    finally:
        subprocess.run(["scontrol", "update", "PartitionName=debug", "State=UP"], check=True)
        reopened = time.time()
    log = run.communicate(timeout=300)[0]
    assert run.returncode == 0, log[-4000:]
    assert (tmp_path / "b.txt").exists()

    # One job per rule (a refused submission creates none), the first sent once the partition was back.
    assert {rule: len(jobs) for rule, jobs in jobs_of(account).items()} == {"a": 1, "b": 1}
    assert submitted_at(account)["a"] >= math.floor(reopened) - 1
    # Each retry said so in Snakemake's log (stderr and .snakemake/log), the plugin itself saw no error.
    retry = "sbatch: Required partition not available (inactive or drain); retry 1 in "
    assert retry in log and "sbatch: answered after " in log and "sbatch failed" not in log
    (saved,) = (tmp_path / ".snakemake/log").glob("*.snakemake.log")
    assert retry in saved.read_text()


def test_a_paused_controller_loses_no_submission_and_no_status(slurm, tmp_path):
    # 12 s of status retries here (45 s in a run): one 10 s timeout, then "no news".
    env = wrapped(tmp_path, LONGVID_SLURM_STATUS_BUDGET="12")
    show_config = ["scontrol", "show", "config"]
    config = subprocess.run(show_config, env=env, capture_output=True, text=True, check=True)
    name = f"t{uuid.uuid4().hex[:10]}"
    submit = ["sbatch", "--parsable", "--job-name", name, "--comment", "rule_a", "--output", "/dev/null",
              "--wrap", "true"]
    status = ["squeue", "--format=%i|%T", "--states=all", "--noheader", "--name", name]
    with paused_controller(slurm):
        paused = time.monotonic()
        sbatch = subprocess.Popen(submit, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # The plugin reads MinJobAge every status check; without it, it would switch to sacct (no slurmdbd).
        start = time.monotonic()
        again = subprocess.run(show_config, env=env, capture_output=True, text=True)
        assert again.returncode == 0 and again.stdout == config.stdout and time.monotonic() - start < 3
        # A failed status query would drop the jobs from Snakemake's watch; "no news" keeps them.
        start = time.monotonic()
        queued = subprocess.run(status, env=env, capture_output=True, text=True, timeout=60)
        assert (queued.returncode, queued.stdout) == (0, "") and time.monotonic() - start < 20
        time.sleep(max(0.0, paused + 11 - time.monotonic()))  # past sbatch's own 10 s timeout
    out, err = sbatch.communicate(timeout=120)
    assert sbatch.returncode == 0, err

    # slurmctld took the timed-out submission once it ran again; the wrapper found it, sent no second.
    job = out.strip()
    jobs = subprocess.check_output(status, text=True).split()
    assert len(jobs) == 1 and jobs[0].startswith(f"{job}|"), jobs
    log = retry_log(tmp_path)
    assert "sbatch: Socket timed out on send/recv operation; retry 1 in " in log
    assert f"sbatch: the timed-out submission reached Slurm after all: job {job} (not sent again)" in log
    assert "squeue: no answer from Slurm for " in log and err == ""
