"""Training checkpoints that survive a kill at any instant.

Layout under `run_dir/checkpoints/`:

    step_00000100/   model.pt (model state dict), trainer.pt (everything else), meta.json
    step_00000200/   ... (DeepSpeed: its own mp_rank_*/zero_pp_rank_* files, rng_rank*.pt, meta.json)
    latest           "step_00000200" (same format as DeepSpeed's `latest`, so either loader reads it)

A checkpoint is written into `.tmp-step_*`, fsynced, then renamed into place; `latest` is replaced
atomically only after that, and old checkpoints are pruned only after `latest` moved. A crash
therefore leaves either the previous checkpoint or the new one, never a half-written one that looks
complete. `meta.json` is written last inside the temp dir, so "has meta.json" means "complete".

Loading uses `torch.load(weights_only=True)`: no pickled code runs on resume. The state must hence be
plain (tensors, numbers, strings, lists, dicts); `save` checks this up front so a bad state fails at
the first save, not at the resume hours later. RNG states are converted by `capture_rng()`.
"""

from __future__ import annotations

import datetime
import json
import os
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from longvid.io import InputError
from longvid.dist import barrier

MODEL_FILE, TRAINER_FILE, META_FILE, LATEST_FILE = "model.pt", "trainer.pt", "meta.json", "latest"
PLAIN_TYPES = (torch.Tensor, str, int, float, bool, type(None), torch.dtype, torch.Size)


class CheckpointError(InputError):
    """A checkpoint that cannot be read; the message names the file."""


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def capture_rng() -> dict:
    """Every global RNG, as plain types that `torch.load(weights_only=True)` accepts."""
    np_state = np.random.get_state(legacy=False)
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"bit_generator": np_state["bit_generator"], "key": np_state["state"]["key"].tolist(),
                  "pos": np_state["state"]["pos"], "has_gauss": np_state["has_gauss"], "gauss": np_state["gauss"]},
        "python": [py_version, list(py_internal), py_gauss],
    }


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"], "has_gauss": n["has_gauss"], "gauss": n["gauss"],
                         "state": {"key": np.array(n["key"], dtype=np.uint32), "pos": n["pos"]}})
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def check_plain(obj: Any, where: str = "state") -> None:
    """Raise TypeError naming the first value that weights_only loading would refuse."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: key {k!r} is a {type(k).__name__}; use str or int keys")
            check_plain(v, f"{where}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]")
    elif not isinstance(obj, PLAIN_TYPES):
        raise TypeError(f"{where}: {type(obj).__name__} cannot be loaded with weights_only=True; "
                        "store tensors, numbers, strings, lists or dicts")


def code_version() -> str | None:
    """`git describe --always --dirty` of the checkout this package runs from, if it is one."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def fsync_tree(root: Path, recursive: bool = True) -> None:
    """Flush file data and directory entries, so a rename never publishes data still in cache."""
    for path in (sorted(root.rglob("*"), reverse=True) if recursive else []) + [root]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint file is missing") from None
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError... for damaged files
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: unreadable checkpoint ({msg})") from None


class CheckpointManager:
    """Save/prune/find checkpoints of one run. `save` writes from rank 0 only;
    `save_engine`/`load_engine` are collective: every DeepSpeed rank calls them. With several
    nodes, run_dir must be on a shared filesystem (as DeepSpeed's own checkpoints require)."""

    def __init__(self, run_dir: str | os.PathLike, keep_last: int = 3, dataset_version: str | None = None,
                 run_identity: str | None = None):
        if keep_last < 1:
            raise ValueError(f"keep_last={keep_last}: must keep at least one checkpoint")
        self.dir = Path(run_dir) / "checkpoints"
        self.keep_last = keep_last
        self.meta = {"code_version": code_version(),
                     "dataset_version": dataset_version, "run_identity": run_identity}

    def foreign(self, path: Path) -> str | None:
        """Why checkpoint `path` belongs to another run (other settings or data), or None if it is
        this run's. Checkpoints written before run identities were recorded count as this run's."""
        try:
            theirs = json.loads((path / META_FILE).read_text()).get("run_identity")
        except (OSError, ValueError, AttributeError):
            return None  # unreadable meta: loading will name the problem
        mine = self.meta["run_identity"]
        if theirs is None or mine is None or theirs == mine:
            return None
        return f"made by another run (identity {theirs}, this run is {mine}: training settings or data changed)"

    # -- finding -----------------------------------------------------------------------------
    def complete(self) -> list[tuple[int, Path]]:
        """Finished checkpoints, oldest first."""
        found = []
        for p in self.dir.glob("step_*"):
            if p.is_dir() and p.name[5:].isdigit() and (p / META_FILE).exists():
                found.append((int(p.name[5:]), p))
        return sorted(found)

    def latest(self) -> tuple[int, Path] | None:
        """The checkpoint `latest` names; if that one is gone (crash between rename and pointer
        update, or a hand-deleted dir), the newest complete one."""
        pointer = self.dir / LATEST_FILE
        if pointer.exists():
            path = self.dir / pointer.read_text().strip()
            if path.name.startswith("step_") and path.name[5:].isdigit() and (path / META_FILE).exists():
                return int(path.name[5:]), path
        done = self.complete()
        return done[-1] if done else None

    # -- writing -----------------------------------------------------------------------------
    def _tmp_dir(self, step: int) -> Path:
        return self.dir / f".tmp-{tag_for(step)}"

    def _write_meta(self, step_dir: Path, step: int) -> None:
        meta = {"step": step, "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                **self.meta}
        (step_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    def _publish(self, staged: Path, step: int) -> Path:
        """fsync `staged`, rename it into place, move `latest`, prune. Rank 0 only."""
        fsync_tree(staged)
        final = self.dir / tag_for(step)
        if final.exists():  # the same step saved again (e.g. stop requested right after a resume)
            trash = self.dir / f".tmp-old-{final.name}"
            shutil.rmtree(trash, ignore_errors=True)
            final.rename(trash)
        staged.rename(final)
        pointer_tmp = self.dir / f".{LATEST_FILE}.tmp"
        with open(pointer_tmp, "w") as f:
            f.write(final.name)
            f.flush()
            os.fsync(f.fileno())
        os.replace(pointer_tmp, self.dir / LATEST_FILE)
        fsync_tree(self.dir, recursive=False)
        self._prune(keep=final)
        return final

    def _prune(self, keep: Path) -> None:
        # Checkpoints past `keep` belong to a timeline abandoned by resuming from an earlier step:
        # left alone for a human to inspect, and not counted against keep_last.
        done = [(s, p) for s, p in self.complete() if s <= int(keep.name[5:])]
        for _, path in done[: max(0, len(done) - self.keep_last)]:
            if path != keep:
                shutil.rmtree(path)
        for stale in self.dir.glob(".tmp-*"):  # left by a save that was killed, or a replaced step
            shutil.rmtree(stale, ignore_errors=True)

    def save(self, step: int, state: dict) -> Path:
        """Write `state` (model, optimizer, scheduler, rng, data position, step, ...) as checkpoint
        `step`. `state["model"]` goes to its own file so sampling can load weights alone.
        Writes on rank 0 only (other ranks return the path at once): with DDP every rank holds the
        same weights, and concurrent writers would race on the temp dir."""
        if rank() != 0:
            return self.dir / tag_for(step)
        check_plain(state)
        tmp = self._tmp_dir(step)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        torch.save(state.get("model", {}), tmp / MODEL_FILE)
        torch.save({k: v for k, v in state.items() if k != "model"}, tmp / TRAINER_FILE)
        self._write_meta(tmp, step)
        return self._publish(tmp, step)

    def load(self, path: str | os.PathLike, model_only: bool = False) -> dict:
        path = Path(path)
        state = {"model": torch_load(path / MODEL_FILE)}
        if not model_only:
            state.update(torch_load(path / TRAINER_FILE))
        return state

    # -- DeepSpeed ---------------------------------------------------------------------------
    def save_engine(self, engine, step: int, client_state: dict | None = None) -> Path:
        """Collective. DeepSpeed writes every rank's shards into the temp dir; each rank adds its
        own RNG state (they differ per rank); rank 0 then publishes the directory."""
        tag, tmp_root = tag_for(step), self._tmp_dir(step)
        if rank() == 0:
            shutil.rmtree(tmp_root, ignore_errors=True)
            tmp_root.mkdir(parents=True)
        barrier()
        engine.save_checkpoint(str(tmp_root), tag=tag, client_state=client_state or {}, save_latest=False)
        torch.save(capture_rng(), tmp_root / tag / f"rng_rank{rank():05d}.pt")
        barrier()
        final = self.dir / tag
        if rank() == 0:
            for extra in tmp_root.iterdir():  # zero_to_fp32.py & co. go next to the shards
                if extra.name != tag:
                    extra.rename(tmp_root / tag / extra.name)
            self._write_meta(tmp_root / tag, step)
            self._publish(tmp_root / tag, step)
            shutil.rmtree(tmp_root, ignore_errors=True)  # normally already pruned
        barrier()
        return final

    def load_engine(self, engine, path: str | os.PathLike, **kwargs) -> dict:
        """Collective. Restores weights, optimizer (and DeepSpeed's scheduler) and this rank's RNG;
        returns the client state."""
        path = Path(path)
        if not (path / META_FILE).exists():
            raise CheckpointError(f"{path / META_FILE}: missing; not a complete checkpoint")
        try:
            loaded, client_state = engine.load_checkpoint(str(path.parent), tag=path.name, **kwargs)
        except Exception as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{path}: DeepSpeed could not load it ({msg})") from None
        if loaded is None:
            raise CheckpointError(f"{path}: DeepSpeed found no checkpoint there")
        rng_file = path / f"rng_rank{rank():05d}.pt"
        if rng_file.exists():
            restore_rng(torch_load(rng_file))
        return client_state
