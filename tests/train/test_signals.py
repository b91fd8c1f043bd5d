"""A stop signal becomes a flag, every rank stops at the same step, and that step is checkpointed.

The handler alone, then the real trainer (`python -m longvid train` on the session's data,
conftest.shapes_repo) signalled mid-run. test_train_loop covers SIGTERM mid-run and SIGKILL; this
covers SIGUSR1 (Slurm's early warning), a signal before the first periodic checkpoint, and a signal
to one of two srun-style ranks.
"""

import os
import random
import signal
import subprocess
import tempfile
import time

import pytest

from conftest import (SHORT_TRAIN, assert_same_weights, final_weights, interrupt, metric_steps, run_ok, steps_logged,
                      train_cmd, train_env, write_experiment)
from longvid.train.checkpoint import CheckpointManager
from longvid.train.signals import EXIT_PREEMPTED, PreemptionHandler


# signal.raise_signal, not os.kill(getpid): a signal sent to the process may land on another thread
# (torch's workers), and Python then runs its handler a few bytecodes later, after the check (seen in CI).
def test_sigterm_and_sigusr1_set_the_flag_and_handlers_are_restored():
    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGUSR1, mine)
    try:
        with PreemptionHandler() as stop:
            assert not stop.should_stop()
            signal.raise_signal(signal.SIGUSR1)
            assert stop.requested and stop.should_stop() and stop.signal_name == "SIGUSR1"
            signal.raise_signal(signal.SIGTERM)  # a later signal does not kill the process
            assert stop.signal_name == "SIGUSR1"
        assert signal.getsignal(signal.SIGUSR1) is mine
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_sigint_is_left_alone_unless_asked_and_a_second_one_aborts():
    # Python's own SIGINT handler first: in two full-suite runs (never in tests/train alone) SIGINT
    # raised nothing here, so something run earlier in the process had left SIGINT handled otherwise
    # (ignored, or a C-level handler Python does not see). Installing it makes the precondition true.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with PreemptionHandler():
            with pytest.raises(KeyboardInterrupt):
                signal.raise_signal(signal.SIGINT)
        with PreemptionHandler(catch_sigint=True) as stop:
            signal.raise_signal(signal.SIGINT)
            assert stop.requested
            with pytest.raises(KeyboardInterrupt):
                signal.raise_signal(signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


def checkpoints(run_dir) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").glob("step_*"))


def check_stopped_at(run_dir, stopped: int) -> None:
    """`latest` is a checkpoint of the step the run stopped at, holding that step."""
    mgr = CheckpointManager(run_dir)
    step, path = mgr.latest()
    assert step == stopped and path.name == f"step_{stopped:08d}"
    assert mgr.load(path)["step"] == stopped
    assert not (run_dir / "final").exists()


@pytest.mark.slow
@pytest.mark.parametrize("sig,at_step,save_every", [(signal.SIGUSR1, 5, 3), (signal.SIGTERM, 1, 6)],
                         ids=["sigusr1-mid-run", "sigterm-before-the-first-checkpoint"])
def test_a_stop_signal_saves_the_current_step_exits_75_and_the_rerun_ends_identically(
        shapes_repo, shapes_latents, short_run, tmp_path, sig, at_step, save_every):
    """Stopped by a signal and run again, the run ends with the weights of one never stopped
    (short_run, which saved every 3 steps: the cadence of checkpoints is not part of the trajectory)."""
    name, reference = short_run
    if save_every != SHORT_TRAIN["save_every"]:  # a wide window before the first periodic checkpoint
        name = write_experiment(shapes_repo, train={**SHORT_TRAIN, "save_every": save_every})
    cmd = train_cmd(shapes_repo, name, tmp_path, shapes_latents)
    ended = interrupt(cmd, shapes_repo, tmp_path, at_step, sig)
    assert ended.returncode == EXIT_PREEMPTED, ended.stderr[-3000:]
    assert f"stop requested by {signal.Signals(sig).name}" in ended.stderr
    assert "reason=preempted" in ended.stderr  # the line accounting parses
    stopped = steps_logged(tmp_path)
    assert at_step <= stopped < SHORT_TRAIN["steps"]
    check_stopped_at(tmp_path, stopped)
    if at_step < save_every:
        assert stopped < save_every, f"signalled after step {at_step}, it ran on to step {stopped}"
        assert checkpoints(tmp_path) == [f"step_{stopped:08d}"]  # the only one: saved for the signal

    rerun = run_ok(cmd, shapes_repo)
    assert f"resumed from {tmp_path / 'checkpoints' / f'step_{stopped:08d}'}" in rerun.stderr
    assert_same_weights(final_weights(tmp_path), reference)
    assert metric_steps(tmp_path) == list(range(1, SHORT_TRAIN["steps"] + 1))


def start_ranks(cmd: list[str], cwd, world: int = 2) -> list[tuple[subprocess.Popen, object]]:
    """`cmd` as the `world` tasks of one srun step on this host (SLURM_* only, as srun sets them; the
    rendezvous port comes from the job id), each with its stderr in a temporary file."""
    job = str(random.randrange(10**6))
    ranks = []
    for r in range(world):
        err = tempfile.TemporaryFile("w+")
        env = train_env(SLURM_PROCID=str(r), SLURM_LOCALID=str(r), SLURM_STEP_NUM_TASKS=str(world),
                        SLURM_JOB_ID=job, SLURM_STEP_NODELIST="localhost")
        ranks.append((subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err,
                                       start_new_session=True), err))
    return ranks


def finish(ranks, timeout: float = 300) -> list[tuple[int, str]]:
    """(exit status, stderr) of every rank; any still running after `timeout` is killed."""
    out = []
    try:
        for proc, err in ranks:
            proc.wait(timeout=timeout)
            err.seek(0)
            out.append((proc.returncode, err.read()))
    finally:
        for proc, err in ranks:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            err.close()
    return out


def run_ranks(cmd, cwd) -> list[str]:
    ended = finish(start_ranks(cmd, cwd))
    for rank, (code, err) in enumerate(ended):
        assert code == 0, f"rank {rank} exited {code}:\n{err[-3000:]}"
    return [err for _, err in ended]


@pytest.mark.slow
def test_sigusr1_to_one_of_two_ranks_stops_both_at_one_step_and_the_rerun_ends_identically(
        shapes_repo, shapes_latents, tmp_path):
    """Slurm signals every task, but not at the same instant: the flag is agreed on by all ranks
    (an all_reduce per step), so both save at one step; the rerun on two ranks resumes from it."""
    steps = 8
    name = write_experiment(shapes_repo, train={**SHORT_TRAIN, "steps": steps})
    clean, run = tmp_path / "clean", tmp_path / "run"
    run_ranks(train_cmd(shapes_repo, name, clean, shapes_latents), shapes_repo)

    cmd = train_cmd(shapes_repo, name, run, shapes_latents)
    ranks = start_ranks(cmd, shapes_repo)
    deadline = time.time() + 300
    while time.time() < deadline and all(p.poll() is None for p, _ in ranks) and steps_logged(run) < 4:
        time.sleep(0.02)
    running = all(p.poll() is None for p, _ in ranks)
    if running:
        ranks[1][0].send_signal(signal.SIGUSR1)  # rank 1 only
    ended = finish(ranks)
    assert running, f"a rank ended before it was signalled: {[(c, e[-2000:]) for c, e in ended]}"
    for rank, (code, err) in enumerate(ended):
        assert code == EXIT_PREEMPTED, f"rank {rank} exited {code}:\n{err[-3000:]}"
    assert "stop requested by SIGUSR1" in ended[1][1] and "stop requested by another rank" in ended[0][1]
    stopped = steps_logged(run)
    assert 4 <= stopped < steps
    check_stopped_at(run, stopped)

    rerun = run_ranks(cmd, shapes_repo)
    assert "resumed from" in rerun[0] and "resumed from" in rerun[1]
    assert_same_weights(final_weights(run), final_weights(clean))
    assert metric_steps(run) == list(range(1, steps + 1))
