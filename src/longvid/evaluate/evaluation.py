"""Score an experiment's samples: tier-1 metrics always (no pretrained weights), tier 2 when configured.

Tier 1, per sample and averaged (see longvid.evaluate.temporal): temporal flicker, motion magnitude
(optical flow), warping error, fraction of static frame pairs; for prompts in the synthetic `shapes`
grammar, whether the video shows the prompted colour and direction (longvid.evaluate.shapes_check);
and the model's validation loss at fixed timesteps with fixed noise on held-out clips
(longvid.evaluate.val_loss). The same pixel metrics are computed on those held-out clips as a
reference: what real data of this dataset scores.

Tier 2 (longvid.evaluate.tier2): FVD over several windows per video, frame-averaged CLIPScore and VBench
dimensions, each run when `evaluate.{fvd,clip,vbench}` names local weights, else reported as skipped
with the reason.

Output: metrics.json with a `table` (one row per metric: samples vs reference, which direction is
better), per-sample rows, the validation-loss breakdown and tier-2 results.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from longvid.io import InputError, write_json
from longvid.video import read_video

log = logging.getLogger(__name__)

PIXEL_METRICS = {  # name -> (label, better)
    "flicker": ("temporal flicker: mean |frame difference| (0-255)", "lower"),
    "motion": ("motion: mean optical flow (px/frame)", "closer to reference"),
    "warp_error": ("warping error: flow-warped frame vs next (0-1)", "lower"),
    "static_fraction": ("static frame pairs (share)", "lower"),
}


def mean_of(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None and not math.isnan(r[key])]
    return float(np.mean(values)) if values else None


def accuracy(checks: list[dict | None], key: str) -> float | None:
    done = [c[key] for c in checks if c]
    return float(np.mean(done)) if done else None


def score_videos(videos: list[np.ndarray], texts: list[str]) -> list[dict]:
    from longvid.evaluate.shapes_check import check
    from longvid.evaluate.temporal import temporal_metrics

    return [{**temporal_metrics(v), "shapes": check(t, v)} for v, t in zip(videos, texts)]


def build_table(samples: list[dict], reference: list[dict], val: dict, tier2: dict) -> list[dict]:
    table = [{"metric": k, "label": label, "samples": mean_of(samples, k), "reference": mean_of(reference, k),
              "better": better} for k, (label, better) in PIXEL_METRICS.items()]
    for what in ("color", "direction"):
        checks = [s.get("shapes") for s in samples]
        if any(checks):
            table.append({"metric": f"shapes_{what}", "label": f"shapes: prompted {what} shown (share)",
                          "samples": accuracy(checks, f"{what}_ok"),
                          "reference": accuracy([r.get("shapes") for r in reference], f"{what}_ok"), "better": "higher"})
    if val.get("status") == "ok":
        ts = ",".join(map(str, val["timesteps"]))
        table.append({"metric": "val_loss", "label": f"validation loss, v-prediction MSE (t={ts})",
                      "samples": val["mean"], "reference": None, "better": "lower"})
    if tier2["fvd"]["status"] == "ok":
        f = tier2["fvd"]
        table.append({"metric": "fvd", "label": f"FVD ({f['windows']} windows x {f['length']} frames, stride "
                      f"{f['stride']})", "samples": f["value"], "reference": None, "better": "lower"})
    if tier2["clip_score"]["status"] == "ok":
        table.append({"metric": "clip_score", "label": "CLIPScore, frame-averaged (x100)",
                      "samples": tier2["clip_score"]["value"], "reference": tier2["clip_score"].get("reference"),
                      "better": "higher"})
    for dim, value in tier2["vbench"].get("dimensions", {}).items():
        table.append({"metric": f"vbench_{dim}", "label": f"VBench {dim}", "samples": value, "reference": None,
                      "better": "higher"})
    return table


def evaluate(exp: dict, model_dir: Path, samples_dir: Path, dataset_dir: Path, device: str = "cpu") -> dict:
    import torch

    from longvid.evaluate import tier2 as t2
    from longvid.evaluate.val_loss import load_val_clips, validation_loss
    from longvid.models.export import model_identity
    from longvid.sample_index import read_index

    cfg, dev = exp["evaluate"], torch.device(device)
    rows = read_index(samples_dir)
    if not rows:
        raise InputError(f"{samples_dir / 'index.json'}: lists no samples")
    checkpoint = model_identity(model_dir)
    per_sample, readable, videos = [], [], []
    for r in rows:
        row = {"video": r["video"], "prompt": r["prompt"], "seed": r["seed"]}
        try:
            videos.append(read_video(samples_dir / r["video"]))
        except InputError as e:  # one broken video does not void the others' scores
            log.warning("%s; left out of the averages", e)
            per_sample.append({**row, "error": str(e)})
            continue
        readable.append(r)
        per_sample.append(row)
    prompts = [r["prompt"] for r in readable]
    scored = iter(score_videos(videos, prompts))
    for row in per_sample:
        if "error" not in row:
            row.update(next(scored))
    log.info("scored %d of %d samples", len(videos), len(rows))

    try:
        clips = load_val_clips(exp, dataset_dir, cfg["val_clips"])
    except InputError as e:  # no held-out data: tier 1 on samples still stands
        log.warning("%s; validation loss and reference metrics skipped", e)
        clips, val = [], t2.skipped(str(e))
    reference_frames = [c.frames for c in clips]
    reference = [{"id": c.id, "text": c.text, **m}
                 for c, m in zip(clips, score_videos(reference_frames, [c.text for c in clips]))]
    if clips:
        from longvid.runtime import Pipeline

        pipe = Pipeline.load(model_dir, exp, dev)
        val = {"status": "ok", **validation_loss(pipe.model, pipe.encoders, pipe.schedule, clips, cfg["val_timesteps"],
                                                 cfg["seed"], dev, exp["train"]["precision"])}
        log.info("validation loss %.4f over %d clips", val["mean"], val["clips"])

    tier2 = {"fvd": t2.fvd(cfg["fvd"], videos, reference_frames, dev),
             "clip_score": t2.clip_score(cfg["clip"], videos, prompts, dev,
                                         reference=(reference_frames, [c.text for c in clips])),
             "vbench": t2.vbench(cfg["vbench"], [samples_dir / r["video"] for r in readable], prompts, dev)}
    for name, result in tier2.items():
        if result["status"] != "ok":
            log.info("tier 2 %s skipped: %s", name, result["reason"])
    return {"experiment": exp.get("name"), "checkpoint": checkpoint, "samples_dir": str(samples_dir),
            "table": build_table(per_sample, reference, val, tier2), "samples": per_sample,
            "reference": reference, "val_loss": val, "tier2": tier2}


def evaluate_stage(cfg: dict, model: Path, samples: Path, dataset_dir: Path, out: Path, name: str) -> int:
    """The evaluate stage: `evaluate` on the GPU when there is one, written to `out`."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    metrics = evaluate({**cfg, "name": name}, Path(model), Path(samples), Path(dataset_dir), device)
    write_json(out, metrics)
    for row in metrics["table"]:
        log.info("%-50s samples=%s reference=%s", row["label"], row["samples"], row["reference"])
    return 0
