"""Process-group setup for every way the trainer is started: torchrun, `srun` (one task per GPU,
any number of nodes) or a plain single process.

The launcher-specific part is a pure function of the environment (`resolve_env`), so it is tested
without a cluster. `init_distributed` then exports the five variables torch's `env://` rendezvous and
DeepSpeed both read: with them present DeepSpeed never falls back to MPI discovery (which needs
mpi4py and fails on a machine without it).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
import torch.distributed as dist

# Ports derived from SLURM_JOB_ID land in [10000, 30000): above the privileged and common service
# ports, below Linux's ephemeral range (32768+), so an outgoing connection never squats on them.
PORT_BASE, PORT_SPAN = 10000, 20000


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    is_main: bool
    launcher: str = "single"  # torchrun | slurm | single


def expand_hostlist(hostlist: str) -> list[str]:
    """`node[01-03,07],login1` -> node01 node02 node03 node07 login1 (Slurm's compact form).

    Several bracket groups in one name (`r[1-2]n[1-2]`) expand as a product, like Slurm does.
    Zero padding of a range is kept (`[08-10]` -> 08 09 10).
    """
    hosts: list[str] = []
    for name in re.findall(r"(?:[^,\[]|\[[^\]]*\])+", hostlist):
        m = re.search(r"\[([^\]]*)\]", name)
        if m is None:
            hosts.append(name)
            continue
        head, tail = name[: m.start()], name[m.end():]
        for part in m.group(1).split(","):
            lo, _, hi = part.partition("-")
            if not hi:
                numbers = [lo]
            else:
                if not (lo.isdigit() and hi.isdigit()) or int(hi) < int(lo):
                    raise ValueError(f"SLURM_JOB_NODELIST: bad range {part!r} in {hostlist!r}")
                numbers = [str(i).zfill(len(lo)) for i in range(int(lo), int(hi) + 1)]
            for n in numbers:
                hosts.extend(expand_hostlist(head + n + tail))
    return hosts


def slurm_hostnames(hostlist: str) -> list[str]:
    """Expand with `scontrol show hostnames` when Slurm is installed (it knows every syntax)."""
    if shutil.which("scontrol"):
        out = subprocess.run(["scontrol", "show", "hostnames", hostlist], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.split():
            return out.stdout.split()
    return expand_hostlist(hostlist)


def port_from_job_id(job_id: str) -> int:
    """Every task of a job derives the same port without talking to the others."""
    return PORT_BASE + int(job_id) % PORT_SPAN


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resolve_env(env: Mapping[str, str],
                hostnames: Callable[[str], list[str]] = slurm_hostnames) -> dict[str, str]:
    """The rendezvous variables for this process: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
    MASTER_PORT, plus LAUNCHER (torchrun | slurm | single).

    torchrun (and the deepspeed launcher) already set them; under `srun` they come from SLURM_*.
    Slurm variables are used only inside a job step (SLURM_STEP_NUM_TASKS is set by srun, not by the
    batch script): a python started directly by an sbatch script is one process even if the job
    asked for eight tasks, and must not wait for seven peers that will never come.
    """
    if "RANK" in env and "WORLD_SIZE" in env:
        out = {k: env[k] for k in ("RANK", "WORLD_SIZE")}
        out["LOCAL_RANK"] = env.get("LOCAL_RANK", "0")
        out["MASTER_ADDR"] = env.get("MASTER_ADDR", "127.0.0.1")
        # torchrun always exports the port; a hand-set RANK without one gets torch's default.
        out["MASTER_PORT"] = env.get("MASTER_PORT") or ("29500" if out["WORLD_SIZE"] != "1" else str(free_port()))
        out["LAUNCHER"] = "torchrun"
    elif "SLURM_STEP_NUM_TASKS" in env and "SLURM_PROCID" in env:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "127.0.0.1"
        out = {"RANK": env["SLURM_PROCID"], "WORLD_SIZE": env["SLURM_STEP_NUM_TASKS"],
               "LOCAL_RANK": env.get("SLURM_LOCALID", "0"), "LAUNCHER": "slurm",
               "MASTER_ADDR": env.get("MASTER_ADDR") or hostnames(nodelist)[0]}
        port = env.get("MASTER_PORT")
        if not port:
            port = str(port_from_job_id(env["SLURM_JOB_ID"])) if "SLURM_JOB_ID" in env else "29500"
        out["MASTER_PORT"] = port
    else:
        out = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LAUNCHER": "single",
               "MASTER_ADDR": env.get("MASTER_ADDR", "127.0.0.1"),
               "MASTER_PORT": env.get("MASTER_PORT") or str(free_port())}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        if not out[key].isdigit():
            raise ValueError(f"{key}={out[key]!r}: expected a non-negative integer")
    return out


def init_distributed(backend: str | None = None) -> DistInfo:
    """Join (or create) the process group and pick this rank's device. Idempotent."""
    resolved = resolve_env(os.environ)
    launcher = resolved.pop("LAUNCHER")
    os.environ.update(resolved)
    rank, world, local_rank = (int(resolved[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if torch.cuda.is_available():
        # With per-task GPU binding (srun --gpus-per-task=1) each task sees one device: index 0.
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    if not dist.is_initialized():
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world,
                                device_id=device if device.type == "cuda" else None)
    return DistInfo(rank, world, local_rank, device, rank == 0, launcher)


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over ranks, in place (also returned); unchanged when not distributed."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= dist.get_world_size()
    return tensor


def cleanup() -> None:
    """Leave the group cleanly. Without the barrier + destroy, a rank can exit while gloo/DeepSpeed
    threads still talk to it; one such run ended in SIGABRT (rc 134) after all its work was done."""
    if dist.is_initialized():
        barrier()
        dist.destroy_process_group()
