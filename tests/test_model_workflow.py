"""The whole default DAG (data half + encode/train/sample/evaluate/report) through real Snakemake,
ending in a report that a real browser opens."""

import json
import re
import subprocess
import sys

import pytest

from conftest import MediaTags, browser_dom, snakemake
from test_workflow import TINY, job_counts

pytestmark = pytest.mark.slow

EXP = "tests/data/tiny-experiment.yaml"


def test_default_target_end_to_end_then_only_what_changed_reruns(repo_copy, tmp_path):
    snakemake(repo_copy, "--configfile", TINY, EXP, timeout=1200)
    index = json.loads((repo_copy / "results/samples/tiny/index.json").read_text())
    assert len(index["samples"]) == 4
    for sample in index["samples"]:
        assert (repo_copy / "results/samples/tiny" / sample["video"]).stat().st_size > 0
    assert (repo_copy / "results/train/tiny/final/model.safetensors").exists()

    metrics = json.loads((repo_copy / "results/eval/tiny/metrics.json").read_text())
    table = {row["metric"]: row for row in metrics["table"]}
    assert table["shapes_color"]["reference"] == 1.0  # the checker agrees with the generator on held-out clips
    assert metrics["val_loss"]["status"] == "ok" and len(metrics["samples"]) == 4
    assert {r["status"] for r in metrics["tier2"].values()} == {"skipped"}

    dom = browser_dom(repo_copy / "results/report/tiny.html", tmp_path / "chromium")
    media = MediaTags()
    media.feed(dom)
    assert len(media.videos) == 4 and all(v.get("data-loaded") == "1" for v in media.videos), media.videos
    assert media.images and all(img.get("data-ok") == "1" for img in media.images)  # stats plots, loss curve
    assert all(s["prompt"] in dom for s in index["samples"])
    # provenance comes from the exported model, the train stage's declared output
    final = json.loads((repo_copy / "results/train/tiny/final/config.json").read_text())
    assert final["step"] == 8 and final["provenance"]["run_identity"] in dom and "run identity" in dom
    assert (repo_copy / "results/train/tiny/final/metrics.jsonl").is_file()

    # the same stage run by name, as a person would, writes the same page
    by_hand = tmp_path / "by-hand.html"
    subprocess.run([sys.executable, "-m", "longvid", "report", "--experiment", "tiny", "--configfile", TINY, EXP,
                    "--out", str(by_hand)], cwd=repo_copy, check=True, capture_output=True)
    def timeless(page):
        return re.sub(r"generated \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \w+", "", page)
    assert timeless(by_hand.read_text()) == timeless((repo_copy / "results/report/tiny.html").read_text())
    assert job_counts(snakemake(repo_copy, "-n", "--configfile", TINY, EXP).stdout) == {}
    # Snakemake's own report (`snakemake --report`) collects the flagged outputs with their captions
    snakemake(repo_copy, "--report", "snakemake-report.html", "--configfile", TINY, EXP)
    overview = (repo_copy / "snakemake-report.html").read_text()
    assert all(name in overview for name in ("0000_00.mp4", "tiny.html", "duration.png", "Videos sampled from"))

    tweak = repo_copy / "tweak.yaml"
    tweak.write_text("experiments: {tiny: {sample: {cfg: 1.5}}}\n")
    downstream = job_counts(snakemake(repo_copy, "-n", "--configfile", TINY, EXP, str(tweak)).stdout)
    assert downstream == {"sample": 1, "evaluate": 1, "report": 1, "all": 1}
    tweak.write_text("experiments: {tiny: {description: another page title}}\n")
    assert job_counts(snakemake(repo_copy, "-n", "--configfile", TINY, EXP, str(tweak)).stdout) == {
        "report": 1, "all": 1}
