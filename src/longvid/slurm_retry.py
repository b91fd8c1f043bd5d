"""Slurm's client commands, retried through a scheduler outage: what workflow/scripts/slurm-bin/ runs.

snakemake-executor-plugin-slurm 2.8.0 gives up at the first failed `sbatch` (the job fails, and the
profile's `retries` resubmit within the same second), and a status check whose 5 quick `squeue`/`sacct`
tries all fail drops every running job from Snakemake's watch list: the run then waits forever.
Under `snakemake --profile profiles/slurm` the workflow puts slurm-bin first on PATH (rules/slurm.smk),
so the plugin's calls come here by name:

    python -m longvid.slurm_retry PATH/TO/slurm-bin/<command> ARGS...

- Transient errors (controller unreachable or timing out, "temporarily unavailable", a drained or
  inactive partition, slurmdbd down) are retried with jittered exponential backoff; anything else
  (a bad option, "Requested node configuration is not available", an invalid account) returns at
  once with the command's own output and exit code.
- sbatch keeps trying for LONGVID_SLURM_SUBMIT_PATIENCE seconds (default 600; 0: never retry). A
  timeout may hide a submission that did reach slurmctld (it processes it once it answers again), so
  before resubmitting after one the job is looked up by the plugin's job name and comment, and a job
  found is adopted instead of submitted twice.
- squeue and sacct (job status) retry for STATUS_BUDGET seconds, then answer "no news" (no lines,
  exit 0): the plugin keeps the jobs and asks again at its next check, however long the outage lasts.
- `scontrol show config` (the plugin reads MinJobAge from it every status check and, without an
  answer, switches to sacct, which fails on a cluster without slurmdbd) is served from a snapshot.
- sinfo, sshare, sacctmgr and `scontrol show` only read: they retry like sbatch.

One line per retry goes to $LONGVID_SLURM_RETRY_DIR/retries.log, which the workflow copies into
Snakemake's log (stderr without it): the plugin discards the stderr of a command that succeeds.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

SUBMIT_PATIENCE = 600.0
# The plugin abandons a status query after 60 s; an answer (or "no news") must come before that.
# LONGVID_SLURM_STATUS_BUDGET overrides it (tests: a shorter outage).
STATUS_BUDGET = 45.0
SNAPSHOT_AGE = 600.0  # how long a `scontrol show config` snapshot is served before it is refreshed

# slurmctld (or slurmdbd) never took the request: safe to send again.
REFUSED = re.compile("|".join([
    r"unable to contact slurm controller", r"connection refused", r"temporarily unavailable",
    r"temporarily unable to accept job", r"required partition not available \(inactive or drain\)",
    r"standby mode", r"problem talking to the database", r"failed to open persistent connection",
]), re.I)
# The request was sent but no answer came: slurmctld may still act on it.
NO_ANSWER = re.compile("|".join([
    r"socket timed out on send/recv", r"zero bytes were transmitted or received",
    r"communication connection failure", r"connection reset by peer", r"no answer within",
]), re.I)
SUBMIT, READ, STATUS = "submit", "read", "status"
KINDS = {"sbatch": SUBMIT, "sinfo": READ, "sshare": READ, "sacctmgr": READ, "scontrol": READ,
         "squeue": STATUS, "sacct": STATUS}


class Attempt:
    """One run of the real command (found on env's PATH), its output kept for the caller to judge."""

    def __init__(self, argv: list[str], stdin: bytes | None, env: dict, timeout: float | None = None):
        try:
            p = subprocess.run(argv, input=stdin, capture_output=True, env=env, timeout=timeout)
            self.rc, self.out, self.err = p.returncode, p.stdout, p.stderr
        except subprocess.TimeoutExpired:
            self.rc, self.out = 1, b""
            self.err = f"{argv[0]}: error: no answer within {timeout:.0f} s\n".encode()

    @property
    def reason(self) -> str:
        """sbatch's last error line without "sbatch: error: ... submission failed:" (the plugin treats a
        success whose stderr says "submission failed" as an error, so a retry line must not say it)."""
        lines = [line for line in self.err.decode(errors="replace").splitlines() if line.strip()]
        last = lines[-1] if lines else f"exit code {self.rc}"
        return re.sub(r"^.*submission failed:\s*", "", re.sub(r"^.*\berror:\s*", "", last)).strip()

    def transient(self) -> bool:
        return self.rc != 0 and bool(REFUSED.search(self.err.decode(errors="replace")) or self.no_answer())

    def no_answer(self) -> bool:
        return self.rc != 0 and bool(NO_ANSWER.search(self.err.decode(errors="replace")))

    def emit(self) -> int:
        sys.stdout.buffer.write(self.out)
        sys.stderr.buffer.write(self.err)
        return self.rc


def seconds(variable: str, default: float) -> float:
    value = os.environ.get(variable) or str(default)
    try:
        return float(value)
    except ValueError:
        sys.exit(f"{variable}={value!r}: not a number of seconds")


def say(line: str) -> None:
    folder = os.environ.get("LONGVID_SLURM_RETRY_DIR")
    if folder and Path(folder).is_dir():
        with open(Path(folder) / "retries.log", "a") as log:  # one short append per line: no interleaving
            log.write(line + "\n")
    else:
        print(line, file=sys.stderr, flush=True)


def delays(first: float, cap: float):
    """Jittered exponential backoff: first, 2x first, ... up to cap, each scaled by 0.5-1 so that many
    submissions waiting on the same outage do not all come back in the same second."""
    n = 0
    while True:
        yield min(cap, first * 2**n) * random.uniform(0.5, 1.0)
        n += 1


def option(args: list[str], long: str, short: str | None = None) -> str | None:
    for i, arg in enumerate(args):
        if arg in (long, short) and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(long + "="):
            return arg.split("=", 1)[1]
    return None


def submitted_since(args: list[str], since: float, env: dict) -> str | None:
    """The job a timed-out sbatch may have created after all: same name and comment as this submission
    (the plugin gives every job of a run its run id as name, and rule and wildcards as comment),
    submitted since the first try. "" if slurmctld says there is none, None if it does not answer."""
    name, comment = option(args, "--job-name", "-J"), option(args, "--comment")
    query = Attempt(["squeue", "-h", "--states=all", f"--name={name}", "--format=%i|%V|%k"], None, env)
    if query.rc != 0:
        return None
    cutoff = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(since - 1))  # %V: local, in seconds
    for line in query.out.decode().splitlines():
        job, submit, found_comment = (line.split("|", 2) + ["", ""])[:3]
        if found_comment.strip() == comment and submit >= cutoff:
            return job.strip()
    return ""


def run_submit(name: str, argv: list[str], stdin: bytes | None, env: dict) -> int:
    patience = seconds("LONGVID_SLURM_SUBMIT_PATIENCE", SUBMIT_PATIENCE)
    start = time.time()
    deadline, backoff, tries = start + patience, delays(5, 30), 1
    # Without a name and comment to look for, a submission lost in a timeout cannot be told from none.
    traceable = name != "sbatch" or bool(option(argv, "--job-name", "-J") and option(argv, "--comment"))
    attempt = Attempt(argv, stdin, env)
    while attempt.transient() and (traceable or not attempt.no_answer()):
        pause = next(backoff)
        if time.time() + pause > deadline:
            say(f"{name}: gave up after {time.time() - start:.0f} s and {tries} tries: {attempt.reason}")
            sys.stderr.write(f"{name}: gave up after {time.time() - start:.0f} s of transient errors "
                             f"({tries} tries; LONGVID_SLURM_SUBMIT_PATIENCE={patience:.0f}); the last:\n")
            return attempt.emit()
        left = deadline - time.time()
        say(f"{name}: {attempt.reason}; retry {tries} in {pause:.0f} s (gives up in {left:.0f} s)")
        time.sleep(pause)
        if name == "sbatch" and attempt.no_answer():
            job = submitted_since(argv[1:], start, env)
            if job:
                say(f"sbatch: the timed-out submission reached Slurm after all: job {job} (not sent again)")
                sys.stdout.write(f"{job}\n" if "--parsable" in argv else f"Submitted batch job {job}\n")
                return 0
            if job is None:  # slurmctld still silent: the lost submission may yet arrive; ask again later
                tries += 1
                continue
        tries += 1
        attempt = Attempt(argv, stdin, env)
    if tries > 1 and attempt.rc == 0:
        say(f"{name}: answered after {tries} tries ({time.time() - start:.0f} s)")
    elif attempt.transient():
        say(f"{name}: {attempt.reason}; not retried: without --job-name and --comment a lost submission "
            "could not be told from none, and a second one could run the job twice")
    return attempt.emit()


def run_status(name: str, argv: list[str], env: dict) -> int:
    budget = seconds("LONGVID_SLURM_STATUS_BUDGET", STATUS_BUDGET)
    start = time.time()
    deadline, backoff, tries = start + budget, delays(2, 10), 1
    attempt = Attempt(argv, None, env, timeout=budget)
    while attempt.transient():
        pause = next(backoff)
        left = deadline - time.time() - pause
        if left < 1:
            say(f"{name}: no answer from Slurm for {time.time() - start:.0f} s ({attempt.reason}); "
                "job states unchanged until the next status check")
            return 0  # "no news": the plugin keeps every job and asks again later
        say(f"{name}: {attempt.reason}; retry {tries} in {pause:.0f} s")
        time.sleep(pause)
        tries += 1
        attempt = Attempt(argv, None, env, timeout=left)
    return attempt.emit()


def show_config(argv: list[str], env: dict) -> int:
    """`scontrol show config` from a snapshot, refreshed every SNAPSHOT_AGE s while slurmctld answers
    within 3 s (the plugin's own limit for it is 5 s); a stale snapshot beats no answer."""
    snapshot = Path(os.environ["LONGVID_SLURM_RETRY_DIR"]) / "scontrol-show-config"
    if snapshot.exists() and time.time() - snapshot.stat().st_mtime < SNAPSHOT_AGE:
        sys.stdout.buffer.write(snapshot.read_bytes())
        return 0
    attempt = Attempt(argv, None, env, timeout=3)
    if attempt.rc == 0:
        tmp = snapshot.with_suffix(f".{os.getpid()}")
        tmp.write_bytes(attempt.out)
        tmp.replace(snapshot)  # atomic: a concurrent reader sees the old or the new one
    elif snapshot.exists():
        say(f"scontrol: {attempt.reason}; `scontrol show config` answered from the last snapshot")
        sys.stdout.buffer.write(snapshot.read_bytes())
        return 0
    return attempt.emit()


def main(argv: list[str]) -> int:
    wrapper, args = argv[0], argv[1:]
    name = os.path.basename(wrapper)
    # The real command is the next one on PATH; it (and a job sbatch submits with --export=ALL) gets a
    # PATH without slurm-bin, so nothing below the wrapper sees it.
    here = os.path.realpath(os.path.dirname(os.path.abspath(wrapper)))
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if p and os.path.realpath(p) != here)
    env = {**os.environ, "PATH": path}
    real = shutil.which(name, path=path)
    if name not in KINDS or not real:
        print(f"{name}: not found on PATH beside {wrapper}", file=sys.stderr)
        return 127
    cmd, kind = [name, *args], KINDS[name]  # run by name from env's PATH: its messages read as usual
    if name == "scontrol" and args == ["show", "config"] and os.environ.get("LONGVID_SLURM_RETRY_DIR"):
        return show_config(cmd, env)
    if name in ("scontrol", "sacctmgr") and not {"show", "list"} & set(args):
        os.execve(real, cmd, env)  # a command that changes something runs once, as asked
    if kind == STATUS:
        return run_status(name, cmd, env)
    stdin = None
    wrap = any(a == "--wrap" or a.startswith("--wrap=") for a in args)
    if kind == SUBMIT and not wrap and sys.stdin is not None and not sys.stdin.isatty():
        stdin = sys.stdin.buffer.read()  # a script on stdin (`sbatch ... /dev/stdin`) goes to every try
    return run_submit(name, cmd, stdin, env)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:  # Ctrl-C on Snakemake reaches a wrapper waiting out an outage too
        sys.exit(130)
