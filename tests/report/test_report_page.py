"""`longvid report` on real inputs: a dataset's stats and plot, a training log, sample videos and an
evaluation, rendered to one HTML page that a headless Chromium must be able to show."""

from __future__ import annotations

import argparse
import base64
import json
import re
import shutil
from pathlib import Path

import av
import numpy as np
import pytest

from conftest import MediaTags, browser_dom, stage_args
from longvid import cli
from longvid.video import encode_frames
from longvid.io import InputError
from longvid.report.gather import read_training_log
from longvid.stages import BY_NAME

HOSTILE_PROMPT = 'a red circle <script>alert("x")</script> & moves right'
# (video file, width, height, prompt); the sizes differ so the browser check sees each video's own width.
VIDEOS = [("0000_00.mp4", 32, 32, HOSTILE_PROMPT), ("0001_00.mp4", 48, 32, "a blue square moves left")]


def moving_square(width: int, height: int, frames: int = 12) -> np.ndarray:
    video = np.zeros((frames, height, width, 3), np.uint8)
    for t in range(frames):
        video[t, 8:16, t * 2:t * 2 + 8] = (220, 30, 30)
    return video


def write_png(path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 1.5), dpi=50)
    fig.subplots().bar([1, 2, 3], [3, 1, 2])
    fig.savefig(path, format="png")


@pytest.fixture
def tree(tmp_path) -> dict[str, Path]:
    dataset, run_dir, samples = tmp_path / "dataset", tmp_path / "final", tmp_path / "samples"
    for d in (dataset / "stats", run_dir, samples):
        d.mkdir(parents=True)
    dist = {"count": 4, "min": 1.0, "mean": 2.0, "p50": 2.0, "p90": 3.0, "max": 3.0, "total": 8.0}
    (dataset / "stats.json").write_text(json.dumps({
        "clips": {"scanned": 5, "train": 3, "val": 1, "rejected": 1, "uncaptioned": 0}, "hours": 0.002,
        "duration": dist, "num_frames": dist, "caption_words": dist,
        "caption_t5_tokens": {"count": 4, "min": 150.0, "mean": 212.5, "p50": 210.0, "p90": 288.0, "max": 300.0,
                              "total": 850.0},
        "caption_tokens": {"limit": 226, "t5_exact": False, "over": 1, "captions": 4, "share_over": 0.25},
        "caption_status": {"ok": 3, "truncated": 1, "error": 1},
        "reject_reasons": {"too_short": 1}, "resolutions": {"32x32": 4}}))
    write_png(dataset / "stats" / "duration.png")
    log = [{"step": s, "time": 1000.0 + s, "loss": 1.0 / s, "lr": 1e-3, "samples_per_s": 5.0,
            "tokens_per_s": 90.0} for s in (10, 20, 30)]
    log.append({**log[1], "loss": 0.07})  # a resumed run logs step 20 again
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    run_config = {"dataset": "shapes", "model": {"size": "tiny"}, "train": {"steps": 30, "lr": 1e-3}}
    (run_dir / "config.json").write_text(json.dumps({  # as longvid.models.export writes it
        "format": "longvid-dit", "step": 30, "dit": {}, "experiment": run_config,
        "provenance": {"code_version": "abc1234", "dataset_version": None, "run_identity": "0f0f"}}))
    sidecars = []
    for i, (name, width, height, prompt) in enumerate(VIDEOS):
        encode_frames(samples / name, moving_square(width, height), fps=8)
        sidecars.append({"prompt": prompt, "seed": 100 + i, "video": name, "sampler": "ddim", "steps": 10,
                         "cfg": 3.0, "num_frames": 12, "fps": 8, "height": height, "width": width,
                         "checkpoint": {"step": 30, "sha256": "f" * 64}})
    (samples / "index.json").write_text(json.dumps({"count": len(sidecars), "samples": sidecars}))
    metrics = tmp_path / "eval" / "metrics.json"
    metrics.parent.mkdir()
    metrics.write_text(json.dumps({
        "experiment": "tiny", "checkpoint": {"step": 30, "sha256": "f" * 64},
        "table": [{"metric": "flicker", "label": "temporal flicker (0-255)", "samples": 3.2, "reference": 1.1,
                   "better": "lower"},
                  {"metric": "val_loss", "label": "validation loss", "samples": 0.41, "reference": None,
                   "better": "lower"}],
        "samples": [{"video": "0000_00.mp4", "prompt": HOSTILE_PROMPT, "seed": 100, "flicker": 3.1,
                     "motion": 0.8,
                     "shapes": {"expected": {"color": "red", "direction": "right"}, "color": "red",
                                "direction": "left", "color_ok": True, "direction_ok": False}},
                    {"video": "0001_00.mp4", "prompt": "a blue square moves left", "seed": 101,
                     "flicker": 2.0, "shapes": None}],
        "tier2": {"fvd": {"status": "skipped", "reason": "evaluate.fvd not configured"},
                  "clip_score": {"status": "ok", "value": 0.27}}}))
    return {"dataset": dataset, "run": run_dir, "samples": samples, "metrics": metrics,
            "out": tmp_path / "report" / "tiny.html"}


def report(tree: dict[str, Path]) -> str:
    """Run the stage through its own argument parser, as the Snakemake rule calls it."""
    parser = argparse.ArgumentParser()
    BY_NAME["report"].add_arguments(parser)
    experiment = {"description": "a tiny <b>test</b> run", "dataset": "shapes"}
    args = parser.parse_args([
        *stage_args("experiment", "tiny", "report", experiment, tree["out"].parent.parent),
        "--dataset-dir", str(tree["dataset"]), "--model", str(tree["run"]), "--samples", str(tree["samples"]),
        "--metrics", str(tree["metrics"]), "--out", str(tree["out"])])
    assert BY_NAME["report"].run(args) == 0
    return tree["out"].read_text()


def test_page_is_self_contained_and_escaped(tree):
    page = report(tree)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "url(" not in page  # no CSS fetches either
    for name, *_ in VIDEOS:
        payload = base64.b64encode((tree["samples"] / name).read_bytes()).decode()
        assert f'src="data:video/mp4;base64,{payload}"' in page
    assert page.count("<video controls autoplay loop muted playsinline") == len(VIDEOS)
    assert page.count('src="data:image/png;base64,') == 2  # the dataset plot and the training chart
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; moves" in page
    assert "a tiny &lt;b&gt;test&lt;/b&gt; run" in page
    # metrics table, tier-2 lines, the shapes check and provenance all reach the page
    assert "temporal flicker (0-255)" in page and "evaluate.fvd not configured" in page and "0.27" in page
    assert "color red → red <span class=\"ok\">✓</span>" in page
    assert "direction right → left <span class=\"bad\">✗</span>" in page
    assert "abc1234" in page and "checkpoint step 30" in page
    assert "not available" not in page
    assert not list(tree["out"].parent.glob(".*tmp*"))  # written atomically: no temporary left behind


def dataset_part(page: str) -> str:
    """The page from the dataset statistics to the plots (the dataset section's tables)."""
    return page[page.index("clips scanned"):page.index('<div class="plots">')]


def test_dataset_section_shows_the_caption_gates(tree):
    write_png(tree["dataset"] / "stats" / "caption_tokens.png")  # as the dataset stage writes it
    page = report(tree)
    part = dataset_part(page)
    assert "<td>caption T5 tokens</td><td>4</td><td>150</td><td>212.5</td><td>210</td><td>288</td><td>300</td>" \
        in part
    assert "1 of 4 captions (25 %) over the 226-token limit (estimated)" in part
    assert "<th>caption status</th><td>ok: 3, truncated: 1, error: 1</td>" in part
    assert 'alt="caption_tokens"' in page and page.count('src="data:image/png;base64,') == 3  # + training chart

    stats = json.loads((tree["dataset"] / "stats.json").read_text())
    stats["caption_tokens"] = {"limit": 77, "t5_exact": True, "over": 0, "captions": 4, "share_over": 0.0}
    stats["caption_status"] = {}  # passthrough rows carry no status
    (tree["dataset"] / "stats.json").write_text(json.dumps(stats))
    part = dataset_part(report(tree))
    assert "0 of 4 captions (0 %) over the 77-token limit (exact)" in part
    assert "caption status" not in part


def test_dataset_stats_from_before_the_caption_gates(tree):
    stats = json.loads((tree["dataset"] / "stats.json").read_text())
    for key in ("caption_t5_tokens", "caption_tokens", "caption_status"):
        del stats[key]
    (tree["dataset"] / "stats.json").write_text(json.dumps(stats))
    part = dataset_part(report(tree))
    assert "<td>caption words</td>" in part
    assert "T5" not in part and "caption status" not in part


def test_training_log_keeps_the_last_line_per_step(tree):
    with open(tree["run"] / "metrics.jsonl", "a") as f:
        f.write('{"step": 40, "loss"')  # torn by a killed job
    rows = read_training_log(tree["run"] / "metrics.jsonl")
    assert [r["step"] for r in rows] == [10, 20, 30]
    assert rows[1]["loss"] == 0.07


def test_missing_optional_inputs_become_notes(tree):
    tree["metrics"].unlink()
    (tree["run"] / "metrics.jsonl").unlink()
    shutil.rmtree(tree["dataset"] / "stats")
    page = report(tree)
    assert f"Evaluation not available ({tree['metrics']} not found" in page
    assert f"Training curve not available ({tree['run'] / 'metrics.jsonl'} not found" in page
    assert "Dataset plots not available" in page
    assert page.count("data:video/mp4;base64,") == len(VIDEOS)  # the videos are still there
    assert "no per-sample metrics" in page


def test_missing_samples_index_is_an_input_error(tree, capsys):
    (tree["samples"] / "index.json").unlink()
    with pytest.raises(InputError, match=r"index\.json: samples index is missing"):
        report(tree)
    assert not tree["out"].exists()
    # through the CLI: exit status 2 and the one-line message naming the file
    argv = ["report", *stage_args("experiment", "tiny", "report", {"dataset": "shapes"}, tree["out"].parent.parent),
            "--samples", str(tree["samples"]), "--out", str(tree["out"])]
    assert cli.main(argv) == 2
    assert f"{tree['samples'] / 'index.json'}: samples index is missing" in capsys.readouterr().err


def test_broken_optional_json_is_an_input_error(tree):
    tree["metrics"].write_text("{not json")
    with pytest.raises(InputError, match=re.escape(str(tree["metrics"]))):
        report(tree)


def test_headless_chromium_decodes_every_video_and_image(tree, tmp_path):
    report(tree)
    dom = MediaTags()
    dom.feed(browser_dom(tree["out"], tmp_path / "chromium-profile"))
    failed = [v.get("data-error") for v in dom.videos if v.get("data-loaded") != "1"]
    assert len(dom.videos) == len(VIDEOS) and not failed, f"undecoded videos {failed}"
    assert [v["data-video-width"] for v in dom.videos] == [str(width) for _, width, *_ in VIDEOS]
    assert len(dom.images) == 2 and all(img.get("data-ok") == "1" for img in dom.images)


def test_large_videos_are_embedded_as_smaller_previews(tmp_path):
    from longvid.report.preview import embeddable

    big = tmp_path / "big.mp4"
    noise = np.random.default_rng(0).integers(0, 256, (16, 96, 128, 3), dtype=np.uint8)
    encode_frames(big, noise, 8)
    assert embeddable(big) == (big.read_bytes(), False)  # under the threshold: the file itself
    preview, is_preview = embeddable(big, max_bytes=1000, max_width=64)
    assert is_preview and len(preview) < big.stat().st_size
    (tmp_path / "preview.mp4").write_bytes(preview)
    with av.open(str(tmp_path / "preview.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 16 and frames[0].shape == (48, 64, 3)  # aspect kept, never wider than asked
