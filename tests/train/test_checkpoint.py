"""Checkpoints restore training exactly, are atomic and pruned safely, and fail loudly when damaged."""

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from longvid.train import checkpoint as ckpt
from longvid.train.checkpoint import CheckpointError, CheckpointManager, capture_rng, restore_rng


def draw() -> list:
    return [torch.rand(3).tolist(), np.random.rand(3).tolist(), np.random.randn(2).tolist(),
            [random.random() for _ in range(3)], random.gauss(0, 1)]


def test_rng_round_trip_through_a_weights_only_file(tmp_path):
    np.random.randn(1)  # leave a cached gaussian in numpy's state, the part that is easy to lose
    random.gauss(0, 1)
    state = capture_rng()
    expected = draw()
    torch.save(state, tmp_path / "rng.pt")
    draw()  # move every generator on
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert draw() == expected


class Sampler:
    """A resumable data order: a permutation per epoch from a seeded generator, and a cursor."""

    def __init__(self, n=16, seed=0):
        self.n, self.seed, self.epoch, self.pos = n, seed, 0, 0

    def next_index(self):
        if self.pos == self.n:
            self.epoch, self.pos = self.epoch + 1, 0
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        self.pos += 1
        return int(perm[self.pos - 1])

    def state_dict(self):
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, s):
        self.epoch, self.pos = s["epoch"], s["pos"]


def make_trainer(seed):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 4))
    return model, opt, sched, Sampler()


def train_step(model, opt, sched, sampler, data):
    x = data[sampler.next_index()] + 0.01 * torch.randn(4) + float(np.random.rand()) + random.random()
    loss = model(x).pow(2).mean()  # dropout draws from torch's RNG too
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    return loss.item()


def trainer_state(step, model, opt, sched, sampler):
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "sampler": sampler.state_dict(), "rng": capture_rng(), "step": step}


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    data = torch.randn(16, 4)
    model, opt, sched, sampler = make_trainer(0)
    for _ in range(5):
        train_step(model, opt, sched, sampler, data)
    mgr = CheckpointManager(tmp_path, keep_last=2, dataset_version="v1")
    mgr.save(5, trainer_state(5, model, opt, sched, sampler))
    reference = [train_step(model, opt, sched, sampler, data) for _ in range(15)]  # crosses an epoch

    model2, opt2, sched2, sampler2 = make_trainer(123)  # different init: everything must come from disk
    step, path = mgr.latest()
    state = mgr.load(path)
    model2.load_state_dict(state["model"])
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(state["scheduler"])
    sampler2.load_state_dict(state["sampler"])
    restore_rng(state["rng"])
    resumed = [train_step(model2, opt2, sched2, sampler2, data) for _ in range(15)]

    assert (step, state["step"]) == (5, 5)
    assert resumed == reference
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    assert mgr.load(path, model_only=True).keys() == {"model"}


def test_meta_json_records_provenance(tmp_path):
    mgr = CheckpointManager(tmp_path, dataset_version="synthetic@3", run_identity="abc123")
    path = mgr.save(7, {"model": {"w": torch.ones(2)}, "step": 7})
    meta = json.loads((path / "meta.json").read_text())
    assert meta["step"] == 7 and meta["dataset_version"] == "synthetic@3" and meta["run_identity"] == "abc123"
    assert meta["time"].startswith("20")
    # the code version names the commit this package runs from (an abbreviated hash, maybe "-dirty")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ckpt.__file__.rsplit("/", 1)[0],
                          capture_output=True, text=True)
    if head.returncode == 0:
        abbrev = meta["code_version"].removesuffix("-dirty").rsplit("-g", 1)[-1]
        assert len(abbrev) >= 7 and head.stdout.strip().startswith(abbrev)


def test_keeps_last_k_and_latest_points_at_the_newest(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=2)
    assert mgr.latest() is None
    for step in (10, 20, 30, 40):
        mgr.save(step, {"model": {"w": torch.full((2,), float(step))}, "step": step})
    assert [s for s, _ in mgr.complete()] == [30, 40]
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step_00000040"
    assert mgr.latest() == (40, tmp_path / "checkpoints" / "step_00000040")
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step_00000030", "step_00000040"]


def test_saving_the_same_step_again_replaces_it(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=1)
    mgr.save(5, {"model": {"w": torch.zeros(1)}})
    path = mgr.save(5, {"model": {"w": torch.ones(1)}})
    assert torch.equal(mgr.load(path)["model"]["w"], torch.ones(1))
    assert [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")] == []


def test_a_save_that_dies_midway_leaves_the_previous_checkpoint_usable(tmp_path, monkeypatch):
    mgr = CheckpointManager(tmp_path, keep_last=1)
    mgr.save(1, {"model": {"w": torch.ones(3)}, "step": 1})
    real_save = torch.save

    def dies_on_second_file(obj, f, *a, **k):
        if str(f).endswith(ckpt.TRAINER_FILE):
            raise OSError("No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", dies_on_second_file)
    with pytest.raises(OSError):
        mgr.save(2, {"model": {"w": torch.zeros(3)}, "step": 2})
    monkeypatch.undo()
    assert mgr.latest() == (1, tmp_path / "checkpoints" / "step_00000001")  # keep_last=1 did not delete it
    assert torch.equal(mgr.load(mgr.latest()[1])["model"]["w"], torch.ones(3))
    assert (tmp_path / "checkpoints" / ".tmp-step_00000002").exists()  # the debris, never "complete"
    mgr.save(3, {"model": {"w": torch.zeros(3)}, "step": 3})
    assert not (tmp_path / "checkpoints" / ".tmp-step_00000002").exists()  # cleaned by the next save


def test_latest_falls_back_when_its_target_is_gone(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=3)
    for step in (1, 2):
        mgr.save(step, {"model": {}, "step": step})
    (tmp_path / "checkpoints" / "latest").write_text("step_00000009")
    assert mgr.latest()[0] == 2


def test_state_that_weights_only_cannot_load_is_refused_at_save_time(tmp_path):
    mgr = CheckpointManager(tmp_path)
    with pytest.raises(TypeError, match=r"state\.sampler\.pos: int64"):
        mgr.save(1, {"model": {}, "sampler": {"pos": np.int64(3)}})
    assert mgr.latest() is None and mgr.complete() == []


@pytest.mark.parametrize("damage", ["truncate", "garbage", "delete"])
def test_damaged_checkpoint_gives_a_one_line_error_naming_the_file(tmp_path, damage):
    mgr = CheckpointManager(tmp_path)
    path = mgr.save(1, {"model": {"w": torch.randn(64, 64)}, "optimizer": {"state": {}}})
    target = path / ckpt.MODEL_FILE
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:200])
    elif damage == "garbage":
        target.write_bytes(b"not a checkpoint at all")
    else:
        target.unlink()
    with pytest.raises(CheckpointError) as err:
        mgr.load(path)
    msg = str(err.value)
    assert str(target) in msg and "\n" not in msg


DEEPSPEED_SCRIPT = r"""
import json, os, sys
import torch, deepspeed
from longvid.dist import init_distributed, cleanup
from longvid.train.checkpoint import CheckpointManager

def flat(obj, prefix=""):
    # every tensor of a nested state dict, keyed by its path
    if isinstance(obj, torch.Tensor):
        return {prefix: obj.detach().clone().float()}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else []
    out = {}
    for k, v in items:
        out.update(flat(v, f"{prefix}/{k}"))
    return out

def engine(seed):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 1))
    cfg = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1, "steps_per_print": 10**9,
           "zero_optimization": {"stage": 2}, "bf16": {"enabled": True},
           "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "weight_decay": 0.01, "torch_adam": True}}}
    return deepspeed.initialize(model=model, model_parameters=model.parameters(), config=cfg)[0]

def step(e, data):
    loss = e(data[0].to(torch.bfloat16)).float().pow(2).mean()
    e.backward(loss)
    e.step()
    return loss.item()

info = init_distributed()
data = [torch.randn(4, 8)]
run_dir = sys.argv[1]
mgr = CheckpointManager(run_dir, keep_last=2)
e1 = engine(0)
for _ in range(3):
    step(e1, data)
path = mgr.save_engine(e1, 3, client_state={"step": 3, "sampler": {"pos": 12}})
saved_weights, saved_opt = flat(e1.module.state_dict()), flat(e1.optimizer.state_dict())
torch.manual_seed(99)
continued = [step(e1, data) for _ in range(2)] + [torch.rand(1).item()]

e2 = engine(1)
assert any(not torch.equal(a, b) for a, b in zip(flat(e2.module.state_dict()).values(), saved_weights.values()))
client = mgr.load_engine(e2, mgr.latest()[1])
weights, opt = flat(e2.module.state_dict()), flat(e2.optimizer.state_dict())
torch.manual_seed(99)  # the RNG restored from the checkpoint is rank 0's at save time; reseed for the comparison
resumed = [step(e2, data) for _ in range(2)] + [torch.rand(1).item()]
result = dict(
    path=str(path), latest=str(mgr.latest()[1]), client={k: client[k] for k in ("step", "sampler")},
    weights_equal=weights.keys() == saved_weights.keys() and all(torch.equal(weights[k], saved_weights[k]) for k in weights),
    opt_keys=len(opt), opt_equal=opt.keys() == saved_opt.keys() and all(torch.equal(opt[k], saved_opt[k]) for k in opt),
    continued=continued, resumed=resumed, files=sorted(os.listdir(path)))
open(os.path.join(run_dir, f"result{info.rank}.json"), "w").write(json.dumps(result))
cleanup()
"""


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, 2])
def test_deepspeed_zero2_engine_round_trip(tmp_path, ranks):
    """A real ZeRO-2 bf16 engine on CPU: weights, optimizer state (fp32 master copies, Adam moments)
    and client state come back exactly, and training continues identically. With 2 ranks every
    rank writes its own optimizer shard and RNG file into the one directory rank 0 publishes."""
    script = tmp_path / "ds.py"
    script.write_text(DEEPSPEED_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["DS_ACCELERATOR"] = "cpu"
    launcher = [] if ranks == 1 else ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
    results = [tmp_path / "run" / f"result{r}.json" for r in range(ranks)]
    for _attempt in range(2):  # DeepSpeed on CPU rarely aborts at interpreter exit (setup-facts §2)
        p = subprocess.run([sys.executable, *launcher, str(script), str(tmp_path / "run")], env=env,
                           capture_output=True, text=True, timeout=600)
        if all(r.exists() for r in results):
            break
    assert all(r.exists() for r in results), (p.stdout + p.stderr)[-4000:]
    for rank, result in enumerate(results):
        r = json.loads(result.read_text())
        assert r["path"] == r["latest"] and r["path"].endswith("checkpoints/step_00000003")
        assert r["client"] == {"step": 3, "sampler": {"pos": 12}}
        assert r["weights_equal"] and r["opt_equal"] and r["opt_keys"] > 0
        assert r["resumed"] == r["continued"]
    files = set(r["files"])
    assert {"meta.json", "mp_rank_00_model_states.pt", "zero_to_fp32.py"} <= files
    assert {f"rng_rank{i:05d}.pt" for i in range(ranks)} <= files
    assert len([f for f in files if f.endswith("optim_states.pt")]) == ranks
    assert not [p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith(".tmp")]
