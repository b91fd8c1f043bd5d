"""`longvid evaluate` on real files: a tiny exported model, a validation split of rendered synthetic
clips, and samples that are right, wrong, or broken."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from longvid import config
from conftest import stage_args
from longvid.evaluate.evaluation import evaluate
from longvid.shapes import caption_of, render_shot
from longvid.io import InputError
from longvid.runtime import build_dit, build_encoders
from longvid.models.export import export_model
from longvid.stages import BY_NAME
from longvid.video import encode_frames
from test_tier2_metrics import clip_dir, extractor  # noqa: F401 - fixtures

FPS = 8


def shot(color, direction, shape="circle", background="black") -> dict:
    return {"shape": shape, "color": color, "direction": direction, "background": background}


@pytest.fixture(scope="module")
def exp() -> dict:
    return config.experiment("tiny", {"data": {"num_frames": 17}, "evaluate": {"val_clips": 2, "seed": 3}})


@pytest.fixture(scope="module")
def model_dir(exp, tmp_path_factory) -> Path:
    model = build_dit(exp, build_encoders(exp), seed=0)
    return export_model(model, exp, tmp_path_factory.mktemp("model") / "final", step=5)


@pytest.fixture
def dataset_dir(tmp_path) -> Path:
    root = tmp_path / "dataset"
    (root / "clips").mkdir(parents=True)
    rows = []
    for i, s in enumerate([shot("green", "up"), shot("yellow", "left", "square", "teal"), shot("red", "down")]):
        encode_frames(root / "clips" / f"v{i}.mp4", render_shot(s, 24, 64, 64), FPS)
        rows.append({"id": f"v{i}", "path": f"clips/v{i}.mp4", "num_frames": 24, "fps": FPS, "text": caption_of(s)})
    (root / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture
def samples_dir(tmp_path) -> Path:
    out = tmp_path / "samples"
    out.mkdir()
    right, wrong = shot("red", "right"), shot("blue", "left", "square", "white")
    videos = {"0000_00.mp4": (caption_of(right), render_shot(right, 17, 64, 64)),
              "0001_00.mp4": (caption_of(wrong), np.full((17, 64, 64, 3), 235, np.uint8)),  # nothing drawn
              "0002_00.mp4": ("a cat on a sofa", render_shot(right, 17, 64, 64))}
    rows = []
    for k, (name, (prompt, frames)) in enumerate(videos.items()):
        encode_frames(out / name, frames, FPS)
        rows.append({"video": name, "prompt": prompt, "seed": 100 + k})
    (out / "0003_00.mp4").write_bytes(b"\x00not a video")
    rows.append({"video": "0003_00.mp4", "prompt": caption_of(right), "seed": 103})
    (out / "index.json").write_text(json.dumps({"count": len(rows), "samples": rows}))
    return out


def by_metric(result: dict) -> dict:
    return {row["metric"]: row for row in result["table"]}


def test_scores_samples_against_reference_and_ground_truth(exp, model_dir, samples_dir, dataset_dir):
    result = evaluate(exp, model_dir, samples_dir, dataset_dir)
    table = by_metric(result)
    # the right sample passes, the blank one fails, the cat is not checked, the broken file is left out
    assert table["shapes_color"]["samples"] == 0.5 and table["shapes_direction"]["samples"] == 0.5
    assert table["shapes_color"]["reference"] == 1.0 and table["shapes_direction"]["reference"] == 1.0
    assert [s.get("shapes") is None for s in result["samples"]] == [False, False, True, True]
    broken = result["samples"][3]
    assert "0003_00.mp4: unreadable video" in broken["error"] and "flicker" not in broken
    assert result["samples"][1]["static_fraction"] == 1.0
    assert len(result["reference"]) == 2  # evaluate.val_clips
    val = result["val_loss"]
    assert val["status"] == "ok" and set(val["per_timestep"]) == {"100", "500", "900"}
    assert table["val_loss"]["samples"] == pytest.approx(val["mean"])
    assert all(np.isfinite(v) and v > 0 for v in val["per_timestep"].values())
    assert result["checkpoint"]["step"] == 5
    assert {r["status"] for r in result["tier2"].values()} == {"skipped"}

    again = evaluate(exp, model_dir, samples_dir, dataset_dir)
    assert again["val_loss"] == val  # fixed noise: the same checkpoint gets the same loss


def test_validation_loss_depends_on_the_seed_only_through_the_noise(exp, model_dir, samples_dir, dataset_dir):
    other = {**exp, "evaluate": {**exp["evaluate"], "seed": 4}}
    a = evaluate(exp, model_dir, samples_dir, dataset_dir)["val_loss"]["mean"]
    b = evaluate(other, model_dir, samples_dir, dataset_dir)["val_loss"]["mean"]
    assert a != b and abs(a - b) < 0.5 * a


def test_without_validation_clips_tier1_still_runs(exp, model_dir, samples_dir, dataset_dir):
    (dataset_dir / "val.jsonl").write_text("")
    result = evaluate(exp, model_dir, samples_dir, dataset_dir)
    assert result["val_loss"]["status"] == "skipped" and "val.jsonl: no validation clips" in result["val_loss"]["reason"]
    table = by_metric(result)
    assert "val_loss" not in table and table["flicker"]["samples"] is not None and table["flicker"]["reference"] is None


def test_missing_index_names_the_file(exp, model_dir, dataset_dir, tmp_path):
    with pytest.raises(InputError, match=r"empty/index.json: samples index is missing"):
        evaluate(exp, model_dir, tmp_path / "empty", dataset_dir)


def test_cli_writes_metrics_json(exp, model_dir, samples_dir, dataset_dir, tmp_path):
    parser = argparse.ArgumentParser()
    BY_NAME["evaluate"].add_arguments(parser)
    out = tmp_path / "eval" / "metrics.json"
    args = parser.parse_args([*stage_args("experiment", "tiny", "evaluate", exp, tmp_path), "--model", str(model_dir),
                              "--samples", str(samples_dir), "--dataset-dir", str(dataset_dir), "--out", str(out)])
    assert BY_NAME["evaluate"].run(args) == 0
    written = json.loads(out.read_text())
    assert written["experiment"] == "tiny" and written["table"][0]["metric"] == "flicker"


def test_tier2_runs_when_weights_are_configured(exp, model_dir, samples_dir, dataset_dir,
                                                extractor, clip_dir):  # noqa: F811 - the fixtures imported above
    configured = {**exp, "evaluate": {**exp["evaluate"],
                                      "fvd": {"extractor_path": extractor, "extractor_kwargs": {}, "windows": 2,
                                              "length": 8, "stride": 1},
                                      "clip": {"model_path": clip_dir, "frames": 4}}}
    result = evaluate(configured, model_dir, samples_dir, dataset_dir)
    assert result["tier2"]["fvd"]["status"] == "ok" and result["tier2"]["clip_score"]["status"] == "ok"
    assert result["tier2"]["vbench"]["status"] == "skipped"
    table = by_metric(result)
    assert table["fvd"]["samples"] > 0 and table["fvd"]["label"] == "FVD (2 windows x 8 frames, stride 1)"
    assert table["clip_score"]["samples"] >= 0 and table["clip_score"]["reference"] is not None  # real clips too
    assert result["tier2"]["fvd"]["sample_windows"] == 3 * 2 and result["tier2"]["fvd"]["reference_windows"] == 2 * 2
