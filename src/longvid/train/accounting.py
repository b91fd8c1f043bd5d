"""How much of a training run's wall time was spent training, waiting, or redoing lost steps.

Reads the trainer's log files (one per job attempt, or one file the attempts append to; per-rank
copies are fine) and splits them into running periods at every `[longvid] run start step=N` line.
Between two periods is a gap, classified by how the earlier period ended:

  preemption  it was asked to stop (our `[longvid] stop requested` line, Slurm's
              `*** JOB n CANCELLED AT t DUE TO TIME LIMIT|PREEMPTION ***`, submitit's
              `Caught signal SIGUSR1 on host: this job is timed-out|preempted`)
  queueing    it finished normally (`[longvid] run end ... reason=finished`) and was started again
  restart     anything else: a crash, an OOM kill, a node failure, a hand-killed job

If the next period resumed from step k while the previous one had reached step m > k, the m-k steps
were trained twice: they are reported as lost steps, with the wall time the previous period spent
after step k. `--now` adds the time since the last log line as an ongoing interruption.

The trainer keeps one log per attempt in the run directory (`attempt_log`: run_dir/logs/, where
Snakemake, which empties a rule's log before every attempt, does not reach), and rank 0 alone writes
the start and end lines; the start line carries the Slurm job and its submit time, so each period
also says how long its job queued.

Log lines start with an ISO timestamp (`2026-11-24T21:40:00+0000 INFO longvid.train: step 10 ...`,
see LOG_FORMAT); the research code's `[2024-05-01 10:00:00,123] [INFO] [RANK 0] ...` and submitit's
`submitit INFO (2024-05-01 10:00:00,123) - ...` are read too. Lines without a timestamp (tracebacks)
take the time of the line before them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from longvid.io import LOG_DATEFMT, LOG_FORMAT, InputError

# Every stage logs with LOG_FORMAT/LOG_DATEFMT (longvid.cli). start_message() is the trainer's first
# line at every (re)start (lines before it would count as the previous period's when attempts append
# to one file); end_message() its last.
__all__ = ["LOG_DATEFMT", "LOG_FORMAT", "end_message", "report", "start_message"]


def start_message(step: int, **fields) -> str:
    return " ".join([f"[longvid] run start step={step}", *(f"{k}={v}" for k, v in fields.items())])


def end_message(step: int, reason: str = "finished") -> str:
    return f"[longvid] run end step={step} reason={reason}"


def job_fields() -> dict:
    """The start line's Slurm fields: job id, times requeued, submit time (best effort: scontrol)."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return {}
    fields = {"job": job}
    if os.environ.get("SLURM_RESTART_COUNT", "0") != "0":
        fields["requeued"] = os.environ["SLURM_RESTART_COUNT"]
    try:
        out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return fields
    if (m := re.search(r"\bSubmitTime=(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)", out)):
        fields["submitted"] = m.group(1)
    return fields


# run_dir/logs/train-<start time>-job<Slurm job>.log (or -pid<pid>.log outside Slurm): attempt_log writes
# it, retry_guard reads the previous attempt's job from it.
ATTEMPT_LOG = re.compile(r"^train-\d{8}T\d{6}-job(?P<job>\d+)\.log$")


@contextlib.contextmanager
def attempt_log(run_dir: Path):
    """Rank 0's log of this attempt, also into run_dir/logs (named as ATTEMPT_LOG says)."""
    if int(os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or 0) != 0:
        yield None
        return
    folder = Path(run_dir) / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    job = os.environ.get("SLURM_JOB_ID")
    path = folder / f"train-{time.strftime('%Y%m%dT%H%M%S')}-{f'job{job}' if job else f'pid{os.getpid()}'}.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, LOG_DATEFMT))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield path
    except BaseException as e:
        logging.getLogger("longvid.train").error("%s: %s", type(e).__name__, " ".join(str(e).split())[:300])
        raise
    finally:
        root.removeHandler(handler)
        handler.close()


TIMESTAMP = re.compile(r"^(?:submitit \w+ \()?\[?(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?)\]?")
START = re.compile(r"\[longvid\] run start step=(\d+)|(building SATVideoDiffusionEngine model)")
SUBMITTED = re.compile(r"\bsubmitted=(\S+)")
END = re.compile(r"\[longvid\] run end step=(\d+) reason=(\w+)")
STEP = re.compile(r"\b(?:step|iteration|iter)[\s=:]+(\d+)")
STOP = [  # the period was asked to stop
    re.compile(r"\[longvid\] stop requested by (?P<why>[\w ]+?);"),
    re.compile(r"\*\*\* (?:JOB|STEP) \S+ ON \S+ CANCELLED AT \S+ DUE TO (?P<why>TIME LIMIT|PREEMPTION)"),
    re.compile(r"Caught signal SIG\w+ on \S+: this job is (?P<why>timed-out|preempted)"),  # submitit
]
SLURM_CANCEL = re.compile(r"\*\*\* (?:JOB|STEP) \S+ ON \S+ CANCELLED AT (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)")
ERROR = re.compile(r"^\S*(?:Error|Exception)\b: |^KeyboardInterrupt|srun: error: |Killed$|OUT_OF_MEMORY|"
                   r"CANCELLED AT")  # a Slurm cancel not matched by STOP: scancel, NODE FAILURE
# How a period ended, weakest first: a stronger one found later in the period replaces a weaker one
# (an exit-time abort after "run end ... finished" does not make the run a crash).
ENDINGS = ("unknown", "error", "finished", "preempted")
LOG_NAMES = ("*.log", "*.out", "*.err", "*.txt", "*.log.*", "*.txt.*")


def parse_time(text: str) -> dt.datetime:
    t = dt.datetime.fromisoformat(text.replace(",", "."))
    # Aware times are compared in this machine's zone; naive ones are taken as written.
    return t.astimezone().replace(tzinfo=None) if t.tzinfo else t


def ending_of(line: str) -> str | None:
    for pattern in STOP:
        if m := pattern.search(line):
            return f"preempted: {m.group('why')}"
    if m := END.search(line):
        return "finished" if m.group(2) == "finished" else f"preempted: {m.group(2)}"
    if ERROR.search(line):
        return "error: " + line.strip()[:120]
    return None


@dataclass
class Period:
    source: str
    start: dt.datetime
    end: dt.datetime
    start_step: int | None = None
    samples: list[tuple[dt.datetime, int]] = field(default_factory=list)
    ended_by: str = "unknown"  # preempted: <why> | finished | error: <line> | unknown
    started: bool = False  # a start line was seen (lines before it belong to the same attempt)
    submitted: dt.datetime | None = None  # the Slurm job's submit time, when the start line says

    @property
    def end_step(self) -> int | None:
        return max((s for _, s in self.samples), default=self.start_step)

    def end_with(self, ending: str) -> None:
        if ENDINGS.index(ending.split(":")[0]) > ENDINGS.index(self.ended_by.split(":")[0]):
            self.ended_by = ending

    def merge(self, other: "Period") -> None:
        """`other` is the same run seen in another file (another rank, or stdout vs. our log)."""
        self.start, self.end = min(self.start, other.start), max(self.end, other.end)
        steps = [s for s in (self.start_step, other.start_step) if s is not None]
        self.start_step = min(steps) if steps else None
        self.samples = sorted(set(self.samples) | set(other.samples))
        self.started = self.started or other.started
        self.submitted = self.submitted or other.submitted
        self.end_with(other.ended_by)


def parse_file(path: Path) -> list[Period]:
    """Periods of one log file: a new one at every start line; lines before the first start line
    (model building, data loading) belong to the first period."""
    periods: list[Period] = []
    now: dt.datetime | None = None
    with open(path, errors="replace") as f:  # streamed: job logs can be large
        for line in f:
            line = line.rstrip("\n")
            if m := TIMESTAMP.match(line) or SLURM_CANCEL.search(line):
                try:
                    now = parse_time(m.group(1))
                except ValueError:  # e.g. month 13: looked like a timestamp, is not one
                    pass
            if now is None:  # nothing to place it in time yet
                continue
            start = START.search(line)
            if not periods or (start and periods[-1].started):
                periods.append(Period(str(path), now, now))
            p = periods[-1]
            p.end = max(p.end, now)
            if start:
                p.started = True
                p.start_step = int(start.group(1)) if start.group(1) else None
                if sub := SUBMITTED.search(line):
                    with contextlib.suppress(ValueError):
                        p.submitted = parse_time(sub.group(1))
            elif step := STEP.search(line):
                p.samples.append((now, int(step.group(1))))
            if ending := ending_of(line):
                p.end_with(ending)
    return periods


def log_files(paths: list[str | Path]) -> list[Path]:
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted({f for pattern in LOG_NAMES for f in path.rglob(pattern) if f.is_file()})
        elif path.is_file():
            files.append(path)
        else:
            raise InputError(f"{path}: no such log file or directory")
    return files


def merge_overlapping(periods: list[Period]) -> list[Period]:
    """A run cannot train twice at once: periods that overlap in time are copies of one attempt."""
    merged: list[Period] = []
    for p in sorted(periods, key=lambda p: p.start):
        # `<=` for a period without start line: e.g. a job log holding only Slurm's cancel line,
        # stamped the moment the trainer (logging elsewhere) stopped.
        if merged and (p.start < merged[-1].end or (not p.started and p.start <= merged[-1].end)):
            merged[-1].merge(p)
        else:
            merged.append(p)
    return merged


def lost_work(prev: Period, resumed_from: int | None) -> tuple[int, float]:
    """Steps of `prev` beyond the step the next period resumed from, and the time spent on them
    (from the last log line at or before that step to the end of `prev`)."""
    if resumed_from is None or prev.end_step is None or prev.end_step <= resumed_from:
        return 0, 0.0
    kept = [t for t, s in prev.samples if s <= resumed_from]
    since = max(kept) if kept else prev.start
    return prev.end_step - resumed_from, (prev.end - since).total_seconds()


def report(paths: list[str | Path], now: dt.datetime | None = None, idle_minutes: float = 5.0) -> dict:
    files = log_files(paths)
    periods = merge_overlapping([p for f in files for p in parse_file(f)])
    if not periods:
        raise InputError(f"{', '.join(map(str, paths))}: no timestamped log lines found")
    gaps = []
    for prev, nxt in zip(periods, periods[1:]):
        why = prev.ended_by.split(":")[0]
        kind = {"preempted": "preemption", "finished": "queueing"}.get(why, "restart")
        lost_steps, lost_s = lost_work(prev, nxt.start_step)
        gaps.append({"start": prev.end, "end": nxt.start, "seconds": (nxt.start - prev.end).total_seconds(),
                     "kind": kind, "after": prev.ended_by, "lost_steps": lost_steps, "lost_seconds": lost_s})
    last = periods[-1]
    if now is not None and (now - last.end).total_seconds() > 60 * idle_minutes and last.ended_by != "finished":
        gaps.append({"start": last.end, "end": now, "seconds": (now - last.end).total_seconds(), "kind": "ongoing",
                     "after": last.ended_by, "lost_steps": 0, "lost_seconds": 0.0})
    end = gaps[-1]["end"] if gaps and gaps[-1]["kind"] == "ongoing" else last.end
    wall = max((end - periods[0].start).total_seconds(), 1e-9)
    running = sum((p.end - p.start).total_seconds() for p in periods)
    lost = sum(g["lost_seconds"] for g in gaps)
    by_kind: dict[str, float] = {}
    for g in gaps:
        by_kind[g["kind"]] = by_kind.get(g["kind"], 0.0) + g["seconds"]
    rows = [{"source": p.source, "start": p.start, "end": p.end, "seconds": (p.end - p.start).total_seconds(),
             "start_step": p.start_step, "end_step": p.end_step,
             "steps": (p.end_step - p.start_step) if None not in (p.end_step, p.start_step) else None,
             "ended_by": p.ended_by,
             "queued_seconds": max(0.0, (p.start - p.submitted).total_seconds()) if p.submitted else None}
            for p in periods]
    totals = {"wall_seconds": wall, "running_seconds": running, "interrupted_seconds": sum(by_kind.values()),
              "interrupted_by_kind": by_kind, "lost_steps": sum(g["lost_steps"] for g in gaps), "lost_seconds": lost,
              "useful_seconds": running - lost, "restarts": len(periods) - 1, "final_step": last.end_step,
              "files": len(files), "queued_seconds": sum(r["queued_seconds"] or 0.0 for r in rows)}
    for key in ("running", "interrupted", "lost", "useful"):
        totals[f"{key}_pct"] = 100.0 * totals[f"{key}_seconds"] / wall
    return {"periods": rows, "gaps": gaps, "totals": totals}


def hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s"


def format_text(rep: dict) -> str:
    out = [f"{'#':>3}  {'start':19}  {'end':19}  {'duration':>11}  {'steps':>15}  ended by"]
    gaps = iter(rep["gaps"])
    for i, p in enumerate(rep["periods"], 1):
        steps = f"{p['start_step']} -> {p['end_step']}" if p["start_step"] is not None else f"? -> {p['end_step']}"
        out.append(f"{i:>3}  {p['start']:%Y-%m-%d %H:%M:%S}  {p['end']:%Y-%m-%d %H:%M:%S}  "
                   f"{hms(p['seconds']):>11}  {steps:>15}  {p['ended_by']}")
        if (g := next(gaps, None)) is not None:
            lost = f", {g['lost_steps']} steps lost ({hms(g['lost_seconds'])} redone)" if g["lost_steps"] else ""
            out.append(f"{'':>3}  gap {hms(g['seconds'])} {g['kind']}{lost}")
    t = rep["totals"]
    kinds = ", ".join(f"{k} {hms(v)}" for k, v in t["interrupted_by_kind"].items())
    out += ["",
            f"wall        {hms(t['wall_seconds']):>11}  over {len(rep['periods'])} running periods, {t['files']} log files",
            f"running     {hms(t['running_seconds']):>11}  {t['running_pct']:5.1f}%",
            f"interrupted {hms(t['interrupted_seconds']):>11}  {t['interrupted_pct']:5.1f}%" + (f"  ({kinds})" if kinds else ""),
            f"queued      {hms(t['queued_seconds']):>11}  (Slurm jobs waiting to start)",
            f"lost        {hms(t['lost_seconds']):>11}  {t['lost_pct']:5.1f}%  ({t['lost_steps']} steps trained twice)",
            f"useful      {hms(t['useful_seconds']):>11}  {t['useful_pct']:5.1f}%  (final step {t['final_step']})"]
    return "\n".join(out)
