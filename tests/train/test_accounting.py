"""Running periods, interruptions and lost steps from synthetic job logs (one file per attempt)."""

import argparse
import datetime as dt
import json
import logging
import re
import time

import pytest

from longvid.io import InputError
from longvid.stages import runtime_report
from longvid.train.accounting import LOG_DATEFMT, LOG_FORMAT, end_message, report, start_message

T0 = dt.datetime(2026, 11, 24, 10, 0, 0, tzinfo=dt.timezone.utc)


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    """Aware timestamps are read in the local zone; pin it so naive Slurm times mean the same."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def trainer_lines(events) -> str:
    """Lines exactly as the trainer's logging writes them (LOG_FORMAT/LOG_DATEFMT, UTC)."""
    fmt = logging.Formatter(LOG_FORMAT, LOG_DATEFMT)
    fmt.converter = time.gmtime
    out = []
    for minutes, msg, *level in events:
        if isinstance(msg, str) and msg.startswith("RAW "):
            out.append(msg[4:])
            continue
        rec = logging.LogRecord("longvid.train", getattr(logging, (level or ["INFO"])[0]), __file__, 0, msg, None, None)
        rec.created = (T0 + dt.timedelta(minutes=minutes)).timestamp()
        out.append(fmt.format(rec))
    return "\n".join(out) + "\n"


def steps_every_10_min(first_minute, first_step, last_step, per=100):
    return [(first_minute + 10 * i, f"step {s} loss 0.5 lr 1e-4") for i, s in
            enumerate(range(first_step, last_step + 1, per))]


@pytest.fixture
def job_logs(tmp_path):
    """Three Slurm job attempts of one experiment, plus rank 1's copy of the last one."""
    d = tmp_path / "slurm_logs"
    d.mkdir()
    # attempt 1: time limit warning (USR1), checkpoint at the current step, clean exit
    (d / "1001.log").write_text(trainer_lines(
        [(0, "loading data"), (0.5, start_message(0, job=1001))] + steps_every_10_min(10, 100, 600)
        + [(60, "[longvid] stop requested by SIGUSR1; saving a checkpoint and exiting with 75", "WARNING"),
           (60.25, "RAW slurmstepd: error: *** JOB 1001 ON n01 CANCELLED AT 2026-11-24T11:00:15 DUE TO TIME LIMIT ***"),
           (60.5, "[longvid] checkpoint saved step=600")]))
    # attempt 2: 30 min in the queue, then a crash after step 900; last periodic checkpoint was 800.
    # (A traceback has no timestamp of its own: it is placed at the line before it.)
    (d / "1002.log").write_text(trainer_lines(
        [(90, start_message(600, job=1002))] + steps_every_10_min(100, 700, 900)
        + [(110, "[longvid] checkpoint saved step=800"),
           (125, "training failed, exiting", "ERROR"),
           (125, "RAW Traceback (most recent call last):"),
           (125, "RAW RuntimeError: CUDA error: an illegal memory access was encountered")]))
    # attempt 3: retried by Snakemake, resumes from 800 (steps 801..900 are trained again), finishes
    third = [(135, start_message(800, job=1003))] + steps_every_10_min(145, 900, 1000) + [(155, end_message(1000))]
    (d / "1003.log").write_text(trainer_lines(third))
    (d / "1003_rank1.log").write_text(trainer_lines([(135 + 1 / 60, start_message(800))] + third[1:]))
    (d / "notes.md").write_text("2026-11-24T23:00:00 not a log: wrong extension, ignored\n")
    return d


def test_periods_gaps_and_lost_work(job_logs):
    rep = report([job_logs])
    periods, gaps, t = rep["periods"], rep["gaps"], rep["totals"]
    assert [(p["start_step"], p["end_step"], p["steps"]) for p in periods] == [(0, 600, 600), (600, 900, 300), (800, 1000, 200)]
    assert [p["seconds"] for p in periods] == [3630, 2100, 1200]
    assert periods[0]["ended_by"] == "preempted: SIGUSR1"
    assert periods[1]["ended_by"].startswith("error: RuntimeError: CUDA error")
    assert periods[2]["ended_by"] == "finished"

    assert [(g["kind"], g["seconds"], g["lost_steps"], g["lost_seconds"]) for g in gaps] == [
        ("preemption", 1770, 0, 0), ("restart", 600, 100, 900)]  # 900 s: step 800 at 11:50, crash at 12:05
    assert t["wall_seconds"] == 9300 and t["running_seconds"] == 6930 and t["interrupted_seconds"] == 2370
    assert t["interrupted_by_kind"] == {"preemption": 1770, "restart": 600}
    assert (t["lost_steps"], t["lost_seconds"], t["useful_seconds"]) == (100, 900, 6030)
    assert t["running_pct"] == pytest.approx(100 * 6930 / 9300) and t["lost_pct"] == pytest.approx(100 * 900 / 9300)
    assert (t["restarts"], t["final_step"], t["files"]) == (2, 1000, 4)


def test_single_appended_log_and_the_seed_format(tmp_path):
    """The research code's log.txt: restarts marked by the model-building line, no start step."""
    lines = ["[2024-05-01 10:00:00,001] [INFO] [RANK 0] building SATVideoDiffusionEngine model ...",
             "[2024-05-01 10:05:00,002] [INFO] [RANK 0]  iteration      100/    5000 | loss 0.3",
             "[2024-05-01 11:00:00,000] [INFO] [RANK 0]  iteration      700/    5000 | loss 0.2",
             "[2024-05-01 11:40:00,000] [INFO] [RANK 0] building SATVideoDiffusionEngine model ...",
             "[2024-05-01 11:45:00,000] [INFO] [RANK 0]  iteration      600/    5000 | loss 0.2",
             "[2024-05-01 12:00:00,000] [INFO] [RANK 0]  iteration      900/    5000 | loss 0.2"]
    (tmp_path / "log.txt").write_text("\n".join(lines) + "\n")
    rep = report([tmp_path / "log.txt"])
    assert [(p["start_step"], p["end_step"]) for p in rep["periods"]] == [(None, 700), (None, 900)]
    assert [(g["kind"], g["seconds"]) for g in rep["gaps"]] == [("restart", 2400)]
    assert rep["totals"]["running_seconds"] == pytest.approx(3600 + 1200, abs=0.01)


def test_submitit_job_logs_one_file_per_attempt(tmp_path):
    """submitit's own lines (timestamp in parentheses) and its timeout message end an attempt."""
    (tmp_path / "7001_0_log.out").write_text("\n".join([
        "submitit INFO (2024-05-01 10:00:00,000) - Starting with JobEnvironment(job_id=7001, ...)",
        "[2024-05-01 10:00:30,000] [INFO] [RANK 0] building SATVideoDiffusionEngine model ...",
        "[2024-05-01 13:50:00,000] [INFO] [RANK 0]  iteration      400/    5000 | loss 0.3",
        "submitit INFO (2024-05-01 13:52:00,000) - Job has timed out. Ran 232 minutes out of requested 240 minutes.",
        "submitit WARNING (2024-05-01 13:52:00,001) - Caught signal SIGUSR1 on n01: this job is timed-out.",
        "submitit INFO (2024-05-01 13:52:01,000) - Exiting gracefully after preemption/timeout."]) + "\n")
    (tmp_path / "7002_0_log.out").write_text("\n".join([
        "submitit INFO (2024-05-01 15:00:00,000) - Starting with JobEnvironment(job_id=7002, ...)",
        "[2024-05-01 15:00:30,000] [INFO] [RANK 0] building SATVideoDiffusionEngine model ...",
        "[2024-05-01 15:10:00,000] [INFO] [RANK 0]  iteration      500/    5000 | loss 0.3"]) + "\n")
    rep = report([tmp_path])
    assert [p["ended_by"] for p in rep["periods"]] == ["preempted: timed-out", "unknown"]
    assert [(g["kind"], g["seconds"]) for g in rep["gaps"]] == [("preemption", 3600 + 7 * 60 + 59)]
    assert rep["periods"][0]["seconds"] == 3 * 3600 + 52 * 60 + 1


def test_now_adds_an_ongoing_interruption(tmp_path):
    (tmp_path / "a.log").write_text(trainer_lines([(0, start_message(0))] + steps_every_10_min(10, 100, 300)))
    last = T0.replace(tzinfo=None) + dt.timedelta(minutes=30)
    rep = report([tmp_path / "a.log"], now=last + dt.timedelta(minutes=3))
    assert rep["gaps"] == []  # silence shorter than idle_minutes: still running
    rep = report([tmp_path / "a.log"], now=last + dt.timedelta(hours=1))
    assert [(g["kind"], g["seconds"]) for g in rep["gaps"]] == [("ongoing", 3600)]
    assert rep["totals"]["interrupted_pct"] == pytest.approx(100 * 3600 / 5400)


def test_cli_prints_a_table_and_writes_json(job_logs, tmp_path, capsys):
    p = argparse.ArgumentParser()
    runtime_report.add_arguments(p)
    assert runtime_report.run(p.parse_args([str(job_logs), "--json", str(tmp_path / "r.json")])) == 0
    text = capsys.readouterr().out
    assert "gap 0h29m30s preemption" in text and "gap 0h10m00s restart, 100 steps lost (0h15m00s redone)" in text
    assert re.search(r"useful\s+1h40m30s\s+64\.8%", text) and re.search(r"1\s+2026-11-24 10:00:00\s+2026-11-24 11:00:30", text)
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["totals"]["lost_steps"] == 100 and len(saved["periods"]) == 3


def test_bad_inputs_name_the_path(tmp_path):
    with pytest.raises(InputError, match="nope.log: no such log file"):
        report([tmp_path / "nope.log"])
    (tmp_path / "empty.log").write_text("no timestamps here\n")
    with pytest.raises(InputError, match="empty.log: no timestamped log lines"):
        report([tmp_path / "empty.log"])


def test_attempt_logs_rank0_only_and_queue_time(tmp_path, monkeypatch):
    """accounting.attempt_log: one file per attempt in run_dir/logs (rank 0 only); the start line's
    `submitted=` (the Slurm job's submit time) becomes the period's queue time."""
    import logging

    from longvid.train import accounting

    log = logging.getLogger("longvid.train")
    monkeypatch.setenv("SLURM_PROCID", "1")
    with accounting.attempt_log(tmp_path) as path:
        assert path is None  # another rank: its lines go to the job's log only
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_JOB_ID", "41")
    logging.getLogger().setLevel(logging.INFO)
    with accounting.attempt_log(tmp_path) as path:
        log.info("building the model")
        log.info(accounting.start_message(0, world_size=2, job=41, submitted="2026-01-01T00:00:00"))
    assert path.parent == tmp_path / "logs" and path.name.endswith("-job41.log")
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and "run start step=0" in lines[1]
    with pytest.raises(ValueError), accounting.attempt_log(tmp_path) as failing:
        raise ValueError("bad shard\nsecond line")
    assert failing.read_text().strip().endswith("ValueError: bad shard second line")
    rep = accounting.report([path])
    assert rep["periods"][0]["queued_seconds"] > 0 and rep["totals"]["queued_seconds"] > 0
