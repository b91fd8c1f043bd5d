"""A stop signal becomes a flag, every rank stops at the same step, and that step is checkpointed."""

import json
import os
import random
import signal
import subprocess
import sys

import pytest

from longvid.train.signals import EXIT_PREEMPTED, PreemptionHandler


def test_sigterm_and_sigusr1_set_the_flag_and_handlers_are_restored():
    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGUSR1, mine)
    try:
        with PreemptionHandler() as stop:
            assert not stop.should_stop()
            os.kill(os.getpid(), signal.SIGUSR1)
            assert stop.requested and stop.should_stop() and stop.signal_name == "SIGUSR1"
            os.kill(os.getpid(), signal.SIGTERM)  # a later signal does not kill the process
            assert stop.signal_name == "SIGUSR1"
        assert signal.getsignal(signal.SIGUSR1) is mine
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_sigint_is_left_alone_unless_asked_and_a_second_one_aborts():
    with PreemptionHandler():
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    with PreemptionHandler(catch_sigint=True) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# A training loop as the trainer writes it: two gloo ranks, checkpoint only on request.
LOOP = r"""
import json, sys, time, torch
from longvid.dist import init_distributed, all_reduce_mean, barrier, cleanup
from longvid.train.checkpoint import CheckpointManager
from longvid.train.signals import PreemptionHandler, EXIT_PREEMPTED

info = init_distributed()
torch.manual_seed(0)
model = torch.nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
mgr = CheckpointManager(sys.argv[1])
with PreemptionHandler() as stop:
    for step in range(1, 100000):
        loss = model(torch.randn(8, 4)).pow(2).mean()
        opt.zero_grad(); loss.backward()
        for p in model.parameters():
            all_reduce_mean(p.grad)
        opt.step()
        time.sleep(0.01)
        print(f"step {step}", flush=True)
        if stop.should_stop(info):
            if info.is_main:
                mgr.save(step, {"model": model.state_dict(), "step": step})
            print(json.dumps({"stopped_at": step, "weight_sum": float(model.weight.sum())}), flush=True)
            barrier()
            cleanup()
            sys.exit(EXIT_PREEMPTED)
"""


def test_sigterm_to_one_rank_checkpoints_the_current_step_and_exits_75(tmp_path):
    script = tmp_path / "loop.py"
    script.write_text(LOOP)
    job = str(random.randrange(10**6))
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("SLURM_") and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "run")], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**base, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r), "SLURM_STEP_NUM_TASKS": "2",
                                   "SLURM_JOB_ID": job, "SLURM_STEP_NODELIST": "localhost"})
             for r in range(2)]
    try:
        for line in procs[1].stdout:  # let it train a few steps, then signal rank 1 only
            if line.strip() == "step 5":
                procs[1].send_signal(signal.SIGTERM)
                signalled_after = 5
                break
        outs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    reports = []
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == EXIT_PREEMPTED, err[-3000:]
        reports.append(json.loads(out.strip().splitlines()[-1]))
    stopped = reports[0]["stopped_at"]
    assert reports[1]["stopped_at"] == stopped >= signalled_after  # both ranks agree, at or after the signal
    assert stopped < 1000  # it stopped promptly, not at the end of the loop
    assert reports[0]["weight_sum"] == pytest.approx(reports[1]["weight_sum"], abs=0)

    from longvid.train.checkpoint import CheckpointManager
    mgr = CheckpointManager(tmp_path / "run")
    step, path = mgr.latest()
    state = mgr.load(path)
    assert step == state["step"] == stopped
    assert float(state["model"]["weight"].sum()) == pytest.approx(reports[0]["weight_sum"], abs=0)
    assert "stop requested by SIGTERM" in outs[1][1] and "stop requested by another rank" in outs[0][1]
