"""A Snakemake retry must not undo a person's `scancel`.

The train rule's `retries` exist for the time-limit continuation: the trainer checkpoints at the
warning signal, exits 75, and Snakemake resubmits it as a new job. Snakemake cannot tell that exit
from a job somebody cancelled (both are failed jobs to it), so it would resubmit a cancelled run too.
The retry therefore looks up how the previous attempt's Slurm job ended and refuses, in one line,
when Slurm says CANCELLED. A rerun that a person starts (attempt 1) always resumes.

The previous job is read from the newest attempt log's name (accounting.ATTEMPT_LOG); its state from squeue (finished jobs stay listed for the
cluster's MinJobAge) or sacct. Where neither answers, the retry goes ahead: resuming is the safe side.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from longvid.io import InputError
from longvid.train.accounting import ATTEMPT_LOG


def previous_job(run_dir: Path) -> str | None:
    """The Slurm job id of the newest attempt log in run_dir/logs that is not this job's."""
    this = os.environ.get("SLURM_JOB_ID")
    names = sorted(p.name for p in Path(run_dir, "logs").glob("train-*.log"))
    jobs = [m["job"] for m in map(ATTEMPT_LOG.match, names) if m]
    return next((job for job in reversed(jobs) if job != this), None)


def _first_word(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out[0] if out else None


def slurm_state(job: str) -> str | None:
    """CANCELLED, FAILED, TIMEOUT, ... of a job, or None when Slurm does not say."""
    return (_first_word(["squeue", "-h", "--states=all", "-j", job, "-o", "%T"])
            or _first_word(["sacct", "-n", "-X", "-P", "-j", job, "-o", "State"]))  # "CANCELLED by 1000"


def refuse_retry_after_cancel(run_dir: Path, attempt: int) -> None:
    if attempt <= 1:
        return
    job = previous_job(run_dir)
    if job and slurm_state(job) == "CANCELLED":
        raise InputError(f"{run_dir}: not retrying: the previous attempt (Slurm job {job}) was cancelled; "
                         "rerun snakemake to resume from its newest checkpoint")
