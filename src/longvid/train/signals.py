"""Checkpoint-and-exit when the scheduler announces the end of the allocation.

Slurm sends SIGTERM to every task at the time limit and on preemption, then SIGKILL after
`KillWait` (30 s by default) or the partition's `GraceTime`: often too short to save a large model.
Ask for an earlier warning with `sbatch --signal=USR1@300` (no `B:` prefix, so it reaches the srun
tasks and not only the batch shell; via the Snakemake Slurm plugin: `slurm_extra: "--signal=USR1@300"`).
Under torchrun the agent forwards SIGTERM/SIGINT/SIGHUP/SIGQUIT to the workers, then SIGKILLs them
after `--shutdown-timeout` (30 s). SIGUSR1 is *not* forwarded by default and its default action kills
the agent: use `torchrun --signals-to-handle=SIGTERM,SIGINT,SIGUSR1 --shutdown-timeout=600`, or
start the ranks with `srun` directly (one task per GPU, see dist.py), which has no middleman.

The handler only sets a flag (a signal can land anywhere, e.g. inside an optimizer step or a
collective); the training loop checks it between steps:

    with PreemptionHandler() as stop:
        for step in ...:
            train_step()
            if stop.should_stop(dist_info):      # collective: every rank gets the same answer
                save_checkpoint(step)            # all ranks at the same step
                sys.exit(EXIT_PREEMPTED)

Exit codes:
  0  (EXIT_FINISHED)  training reached its last step; outputs are complete.
  75 (EXIT_PREEMPTED) stopped on request *after* saving a checkpoint at the current step. This is
     EX_TEMPFAIL from sysexits.h ("try again later"). It is non-zero on purpose: Snakemake must mark
     the job failed so that its `retries:` resubmit it (the rerun resumes from the checkpoint), and a
     zero exit would look like success to Slurm and anything else watching. 75 rather than 143 keeps
     "saved, please requeue" distinguishable from "killed by SIGTERM before it could save" (143 from
     a shell, -15 from Python's subprocess, `0:15` in sacct).
The train rule must therefore declare a retry budget (workflow/rules/model.smk) and must *not* declare the run
directory as its output: Snakemake deletes the outputs of a failed job, checkpoints included. Its
output is a file written once training finished (e.g. the final export).
"""

from __future__ import annotations

import logging
import signal
import threading

import torch
import torch.distributed as dist

EXIT_FINISHED = 0
EXIT_PREEMPTED = 75
log = logging.getLogger("longvid.train")


class PreemptionHandler:
    """Context manager that turns SIGTERM/SIGUSR1 (and SIGINT if `catch_sigint`) into a flag.

    A second SIGINT while a stop is pending raises KeyboardInterrupt, so Ctrl-C twice still
    aborts at once. Previous handlers are restored on exit.
    """

    def __init__(self, catch_sigint: bool = False, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGUSR1)):
        self.signals = tuple(signals) + ((signal.SIGINT,) if catch_sigint else ())
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}
        self._announced = False

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = self.signal_name or signal.Signals(signum).name

    def __enter__(self) -> "PreemptionHandler":
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("PreemptionHandler must be entered in the main thread (Python delivers signals there)")
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def should_stop(self, dist_info=None) -> bool:
        """True on every rank if any rank was signalled. Collective when distributed: call it on
        all ranks at the same point of every step (one tiny all_reduce)."""
        stop = self.requested
        if dist_info is not None and dist_info.world_size > 1 and dist.is_initialized():
            flag = torch.tensor([int(stop)], device=dist_info.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item())
        if stop and not self._announced:
            self._announced = True
            # Logged here, not in the handler: logging from a signal handler can interleave with (or
            # deadlock on) a log call the signal interrupted. `accounting` parses this line.
            by = self.signal_name or "another rank"
            log.warning("[longvid] stop requested by %s; saving a checkpoint and exiting with %d", by, EXIT_PREEMPTED)
        return stop
