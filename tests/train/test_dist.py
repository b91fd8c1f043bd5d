"""Rendezvous from torchrun / srun / nothing, hostlist expansion, and real 2-process gloo groups."""

import json
import os
import random
import subprocess
import sys

import pytest

from longvid.dist import PORT_BASE, PORT_SPAN, expand_hostlist, port_from_job_id, resolve_env

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

WORKER = """
import json, sys, torch
from longvid.dist import init_distributed, all_reduce_mean, cleanup
info = init_distributed()
value = all_reduce_mean(torch.tensor([float(info.rank), 10.0 * info.rank]))
import os
row = dict(rank=info.rank, world=info.world_size, local_rank=info.local_rank, main=info.is_main,
           launcher=info.launcher, device=str(info.device), mean=value.tolist(),
           env={k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")})
open(f"{sys.argv[1]}/rank{info.rank}.json", "w").write(json.dumps(row))
cleanup()
"""


def clean_env() -> dict:
    """The test process's environment without any launcher variables that may leak in from CI."""
    return {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS and not k.startswith("SLURM_")}


def no_lookup(hostlist):
    return expand_hostlist(hostlist)


def test_torchrun_env_is_taken_as_is():
    env = dict(RANK="3", WORLD_SIZE="8", LOCAL_RANK="1", MASTER_ADDR="n01", MASTER_PORT="29533",
               SLURM_PROCID="5", SLURM_STEP_NUM_TASKS="16", SLURM_LOCALID="5")  # torchrun inside srun
    assert resolve_env(env) == dict(RANK="3", WORLD_SIZE="8", LOCAL_RANK="1", MASTER_ADDR="n01",
                                    MASTER_PORT="29533", LAUNCHER="torchrun")


def test_srun_task_env_multi_node():
    env = dict(SLURM_PROCID="9", SLURM_STEP_NUM_TASKS="16", SLURM_NTASKS="16", SLURM_LOCALID="1",
               SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="gpu-a[07-08]", SLURM_STEP_NODELIST="gpu-a[07-08]")
    got = resolve_env(env, hostnames=no_lookup)
    assert got == dict(RANK="9", WORLD_SIZE="16", LOCAL_RANK="1", MASTER_ADDR="gpu-a07",
                       MASTER_PORT=str(PORT_BASE + 4242), LAUNCHER="slurm")
    # every task of the job agrees on the port; an explicit MASTER_PORT wins
    assert resolve_env({**env, "SLURM_PROCID": "0"}, no_lookup)["MASTER_PORT"] == got["MASTER_PORT"]
    assert resolve_env({**env, "MASTER_PORT": "31000"}, no_lookup)["MASTER_PORT"] == "31000"


def test_batch_script_without_srun_is_a_single_process():
    # sbatch sets SLURM_PROCID=0 and SLURM_NTASKS=8 in the batch step too; srun would add STEP_*.
    env = dict(SLURM_PROCID="0", SLURM_NTASKS="8", SLURM_JOB_ID="7", SLURM_JOB_NODELIST="n[1-2]")
    got = resolve_env(env, no_lookup)
    assert (got["RANK"], got["WORLD_SIZE"], got["LAUNCHER"], got["MASTER_ADDR"]) == ("0", "1", "single", "127.0.0.1")
    assert 0 < int(got["MASTER_PORT"]) < 65536


def test_bad_rank_value_names_the_variable():
    with pytest.raises(ValueError, match="RANK='x'"):
        resolve_env(dict(RANK="x", WORLD_SIZE="2", MASTER_PORT="1"))


def test_port_from_job_id_is_deterministic_and_in_range():
    ports = {port_from_job_id(str(j)) for j in (0, 1, 19999, 20000, 123456789, 2**40)}
    assert all(PORT_BASE <= p < PORT_BASE + PORT_SPAN < 32768 for p in ports)
    assert port_from_job_id("123456") == port_from_job_id("123456") != port_from_job_id("123457")


@pytest.mark.parametrize("hostlist, hosts", [
    ("node01", ["node01"]),
    ("node[01-03,07]", ["node01", "node02", "node03", "node07"]),
    ("a[8-10],login1", ["a8", "a9", "a10", "login1"]),
    ("gpu[098-101]", ["gpu098", "gpu099", "gpu100", "gpu101"]),
    ("r[1-2]n[1,3]", ["r1n1", "r1n3", "r2n1", "r2n3"]),
    ("x-[1-2]-ib,y", ["x-1-ib", "x-2-ib", "y"]),
])
def test_expand_hostlist(hostlist, hosts):
    assert expand_hostlist(hostlist) == hosts


def test_expand_hostlist_rejects_a_reversed_range():
    with pytest.raises(ValueError, match="SLURM_JOB_NODELIST"):
        expand_hostlist("n[5-3]")


def read_ranks(out, world):
    rows = [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]
    for r, row in enumerate(rows):
        assert (row["rank"], row["world"], row["main"], row["device"]) == (r, world, r == 0, "cpu")
        assert row["mean"] == pytest.approx([0.5, 5.0])  # mean of [0, 1] and [0, 10]
    return rows


def test_two_srun_tasks_all_reduce_over_gloo(tmp_path):
    """Two processes started the way srun starts them (only SLURM_* set) find each other."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    job_id = str(random.randrange(10**6))
    procs = []
    for rank in range(2):
        # `127.0.0.[1-2]` makes the first host of the expanded list an address this machine answers on.
        env = {**clean_env(), "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "SLURM_NTASKS": "2",
               "SLURM_STEP_NUM_TASKS": "2", "SLURM_JOB_ID": job_id, "SLURM_STEP_NODELIST": "127.0.0.[1-2]"}
        procs.append(subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out[-3000:]
    rows = read_ranks(tmp_path, 2)
    assert {row["launcher"] for row in rows} == {"slurm"}
    assert {row["env"]["MASTER_ADDR"] for row in rows} == {"127.0.0.1"}
    assert {row["env"]["MASTER_PORT"] for row in rows} == {str(port_from_job_id(job_id))}


def test_torchrun_two_processes_all_reduce_over_gloo(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           str(script), str(tmp_path)]
    p = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    rows = read_ranks(tmp_path, 2)
    assert {row["launcher"] for row in rows} == {"torchrun"}
    assert [row["local_rank"] for row in rows] == [0, 1]
