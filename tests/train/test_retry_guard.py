"""retry_guard without a cluster: which attempt was the previous one, and that only a retry of a job
Slurm calls CANCELLED is refused (the refusal itself: tests/test_slurm_model.py, on the real Slurm)."""

import pytest

from longvid.io import InputError
from longvid.train import retry_guard


def logs(run_dir, *names):
    (run_dir / "logs").mkdir(parents=True)
    for name in names:
        (run_dir / "logs" / name).write_text("")


def test_the_previous_job_is_the_newest_attempt_log_of_another_job(tmp_path, monkeypatch):
    logs(tmp_path, "train-20261201T100000-job7.log", "train-20261201T120000-job9.log",
         "train-20261201T130000-pid55.log", "rule-20261201T140000-job12.log", "train-20261201T150000-job12.log")
    monkeypatch.setenv("SLURM_JOB_ID", "12")  # this job's own log does not count
    assert retry_guard.previous_job(tmp_path) == "9"
    monkeypatch.delenv("SLURM_JOB_ID")
    assert retry_guard.previous_job(tmp_path) == "12"
    assert retry_guard.previous_job(tmp_path / "nowhere") is None


def test_only_a_retry_after_a_cancelled_job_is_refused(tmp_path, monkeypatch):
    logs(tmp_path, "train-20261201T100000-job7.log")
    monkeypatch.setattr(retry_guard, "slurm_state", lambda job: {"7": "CANCELLED"}.get(job))
    retry_guard.refuse_retry_after_cancel(tmp_path, attempt=1)  # a person's rerun always resumes
    with pytest.raises(InputError, match=r"Slurm job 7\) was cancelled; rerun snakemake"):
        retry_guard.refuse_retry_after_cancel(tmp_path, attempt=2)
    monkeypatch.setattr(retry_guard, "slurm_state", lambda job: "FAILED")  # exit 75 at the time limit
    retry_guard.refuse_retry_after_cancel(tmp_path, attempt=2)


def test_an_unknown_job_is_no_reason_to_refuse(tmp_path):
    logs(tmp_path, "train-20261201T100000-job999999.log")  # squeue/sacct do not know it (or are absent)
    assert retry_guard.slurm_state("999999") is None
    retry_guard.refuse_retry_after_cancel(tmp_path, attempt=3)
