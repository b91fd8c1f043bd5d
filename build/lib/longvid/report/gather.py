"""Read everything a report shows, tolerating the optional parts being absent.

Only the samples index is required (a report without videos has nothing to report). Every other
input may be missing — an experiment not evaluated yet, a dataset built before plots existed — and
comes back as None or empty, so the page shows a note instead of the stage failing. A file that
exists but is not valid JSON is still an InputError: that is a broken pipeline, not a missing step.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longvid.io import json_object
from longvid.sample_index import read_index

log = logging.getLogger(__name__)

# Keys of the exported model's provenance that say which code, data and settings made it.
PROVENANCE_KEYS = ("step", "code_version", "dataset_version", "run_identity")


@dataclass
class ReportInputs:
    name: str
    experiment: dict
    samples_dir: Path
    samples: list[dict]                      # sidecars from the samples index, in index order
    dataset_stats: dict | None = None
    dataset_plots: list[tuple[str, bytes]] = field(default_factory=list)  # (file stem, PNG bytes)
    training: list[dict] = field(default_factory=list)  # metrics.jsonl rows, one per step, by step
    run_config: dict | None = None  # the experiment the model was trained with
    provenance: dict[str, Any] = field(default_factory=dict)
    evaluation: dict | None = None
    # Where each optional input was looked for, so the page's "not available" notes can name it.
    dataset_dir: Path | None = None
    model_dir: Path | None = None
    metrics_path: Path | None = None


def read_json(path: Path) -> dict | None:
    """A JSON object from `path`; None when it is absent."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        log.info("%s: not found; the report notes it as not available", path)
        return None
    return json_object(text, str(path))


def read_training_log(path: Path) -> list[dict]:
    """One row per step (the last one written), ordered by step.

    A resumed run re-trains the steps after its checkpoint and logs them again; the later line is
    the one the model's history actually went through. A line torn by a killed job is skipped
    rather than failing the report: the curve is still worth drawing.
    """
    if not path.exists():
        return []
    by_step: dict[int, dict] = {}
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s:%d: not valid JSON; skipped", path, lineno)
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
                by_step[int(row["step"])] = row
    return [by_step[s] for s in sorted(by_step)]


def read_model(model_dir: Path) -> tuple[dict | None, dict[str, Any]]:
    """(the experiment the model was trained with, its provenance) from the exported model's
    config.json; (None, {}) when it is absent."""
    meta = read_json(model_dir / "config.json")
    if meta is None:
        return None, {}
    provenance = {"step": meta.get("step"), **(meta.get("provenance") or {})}
    return meta.get("experiment"), {k: v for k, v in provenance.items() if k in PROVENANCE_KEYS}


def read_dataset_plots(dataset_dir: Path) -> list[tuple[str, bytes]]:
    return [(p.stem, p.read_bytes()) for p in sorted((dataset_dir / "stats").glob("*.png"))]


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def gather(name: str, experiment: dict, samples_dir: Path, dataset_dir: Path | None = None,
           model_dir: Path | None = None, metrics: Path | None = None) -> ReportInputs:
    inputs = ReportInputs(name=name, experiment=experiment, samples_dir=samples_dir,
                          samples=read_index(samples_dir), dataset_dir=dataset_dir, model_dir=model_dir,
                          metrics_path=metrics)
    if dataset_dir is not None:
        inputs.dataset_stats = read_json(dataset_dir / "stats.json")
        inputs.dataset_plots = read_dataset_plots(dataset_dir)
    if model_dir is not None:  # the train stage's declared output, never its run directory
        inputs.training = read_training_log(model_dir / "metrics.jsonl")
        inputs.run_config, inputs.provenance = read_model(model_dir)
    if metrics is not None:
        inputs.evaluation = read_json(metrics)
    return inputs
