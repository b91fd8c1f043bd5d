"""Training metrics: `run_dir/metrics.jsonl` (the record the report stage reads) and wandb.

* One JSON object per line, flushed per write, so a killed run keeps every step it logged.
* On resume from step k (`resume_step=k`), lines with step > k are dropped first: the steps after
  the checkpoint are trained again and would otherwise appear twice. Without `resume_step` (a fresh
  start, no checkpoint) the file starts empty.
* wandb runs offline unless WANDB_MODE says otherwise (`wandb sync run_dir/wandb/offline-run-*`
  uploads later). The wandb run id is kept in `run_dir/wandb_run_id`, so a resumed job continues
  the same wandb run. Config keys that look like credentials are dropped before wandb sees them,
  and no environment is passed; API keys stay in the environment or ~/.netrc, never in run_dir.
* Only rank 0 writes; other ranks get a logger whose methods do nothing.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from longvid.io import atomic_path, dumps_row

SECRET_WORDS = ("key", "token", "secret", "password")
log = logging.getLogger("longvid.train")


def redact(config: Any) -> Any:
    """Drop (at any depth) dict keys whose name contains key/token/secret/password."""
    if isinstance(config, dict):
        return {k: redact(v) for k, v in config.items()
                if not any(word in str(k).lower() for word in SECRET_WORDS)}
    if isinstance(config, (list, tuple)):
        return [redact(v) for v in config]
    return config


def truncate_after(path: Path, step: int) -> int:
    """Rewrite `path` without lines whose step > `step` (and without a torn last line). Returns
    the number of lines dropped."""
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines(keepends=True):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1  # a line cut by a kill
            continue
        if row.get("step", 0) > step:
            dropped += 1
        else:
            kept.append(line if line.endswith("\n") else line + "\n")
    if dropped:
        with atomic_path(path) as tmp:
            tmp.write_text("".join(kept))
    return dropped


class Throughput:
    """samples/s and tokens/s since the previous call, for the lines MetricsLogger writes."""

    def __init__(self):
        self.t = time.perf_counter()
        self.samples = self.tokens = 0

    def update(self, samples: int, tokens: int = 0) -> None:
        self.samples += samples
        self.tokens += tokens

    def rates(self) -> dict:
        now = time.perf_counter()
        dt = max(now - self.t, 1e-9)
        out = {"samples_per_s": self.samples / dt, "tokens_per_s": self.tokens / dt}
        self.t, self.samples, self.tokens = now, 0, 0
        return out


class MetricsLogger:
    def __init__(self, run_dir: str | os.PathLike, config: dict | None = None, enabled_wandb: bool = True,
                 project: str = "longvid", name: str | None = None, resume_step: int | None = None,
                 is_main: bool = True):
        self.enabled = is_main
        self.path = Path(run_dir) / "metrics.jsonl"
        self.wandb_run = None
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            truncate_after(self.path, resume_step)
            self._f = open(self.path, "a")
        else:  # a fresh start (no checkpoint) must not mix its curve into a previous attempt's lines
            self._f = open(self.path, "w")
        if enabled_wandb:
            self.wandb_run = self._init_wandb(Path(run_dir), redact(config or {}), project, name,
                                              new_run=resume_step is None)

    def _init_wandb(self, run_dir: Path, config: dict, project: str, name: str | None, new_run: bool):
        import wandb  # 0.5 s import; only paid when wandb is on

        id_file = run_dir / "wandb_run_id"
        if new_run or not id_file.exists():
            id_file.write_text(uuid.uuid4().hex[:8] + "\n")
        return wandb.init(
            dir=str(run_dir), project=project, name=name, config=config, id=id_file.read_text().strip(),
            resume="allow", mode=os.environ.get("WANDB_MODE") or "offline",
            # console capture would copy stdout (and anything printed there) into the run; the
            # trainer's own log file already has it.
            settings=wandb.Settings(console="off", save_code=False, silent=True),
        )

    def log(self, step: int, wandb: bool = True, **metrics: Any) -> None:
        """A row of metrics.jsonl, mirrored to wandb unless `wandb` is False (a stopping step)."""
        if not self.enabled:
            return
        metrics = {k: v.item() if hasattr(v, "item") else v for k, v in metrics.items()}  # tensors, numpy
        row = {"step": step, "time": round(time.time(), 3), **metrics}
        self._f.write(dumps_row(row) + "\n")
        self._f.flush()
        if self.wandb_run is not None and wandb:
            try:
                self.wandb_run.log(metrics, step=step)
            except Exception as e:  # noqa: BLE001 - wandb is a mirror of metrics.jsonl, never a reason to stop
                self._wandb_failed("log", e)

    def _wandb_failed(self, what: str, e: Exception) -> None:
        # e.g. ConnectionResetError when Slurm's signal also killed wandb's service process
        log.warning("wandb %s failed (%s: %s); metrics.jsonl goes on without it", what, type(e).__name__,
                    " ".join(str(e).split())[:160])
        self.wandb_run = None

    def close(self) -> None:
        if not self.enabled:
            return
        self._f.close()
        if self.wandb_run is not None:
            try:
                self.wandb_run.finish()
            except Exception as e:  # noqa: BLE001 - at shutdown a warning, never a changed exit status
                self._wandb_failed("finish", e)
            self.wandb_run = None

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(total: int, initial: int = 0, is_main: bool = True, desc: str = "train"):
    """A tqdm bar over steps, drawn by rank 0 only (eight bars from eight ranks are noise). In a
    batch job stderr is a log file: redraw every 60 s there instead of filling it with updates."""
    from tqdm.auto import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, disable=not is_main, desc=desc, unit="step",
                dynamic_ncols=True, mininterval=0.1 if interactive else 60)
