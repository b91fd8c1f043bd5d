"""The data half end to end through real Snakemake runs on a tiny synthetic dataset."""

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import VENV_BIN, snakemake
from longvid.ingest import synthetic

pytestmark = pytest.mark.slow

TINY = "tests/data/tiny-config.yaml"
DATA = ["data/datasets/shapes/train.jsonl", "data/datasets/shapes/val.jsonl", "data/datasets/shapes/stats.json"]


def job_counts(dry_run_stdout: str) -> dict[str, int]:
    """The `Job stats` table of a dry run, as {rule: count} (empty when nothing is to be done)."""
    if "Nothing to be done" in dry_run_stdout:
        return {}
    table = dry_run_stdout.split("Job stats:")[1].split("Reasons:")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] != "total"}


def test_build_rerun_nothing_then_only_downstream_of_a_changed_threshold(repo_copy):
    # `.venv/bin/snakemake` from a shell whose PATH lacks the venv: every job must still find longvid
    plain = {"HOME": os.environ.get("HOME", "/root"), "PATH": "/usr/local/bin:/usr/bin:/bin"}
    proc = subprocess.run([str(VENV_BIN / "snakemake"), "--cores", "2", *DATA, "--configfile", TINY],
                          cwd=repo_copy, env=plain, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ds = repo_copy / "data/datasets/shapes"
    train = [json.loads(line) for line in (ds / "train.jsonl").read_text().splitlines()]
    val = [json.loads(line) for line in (ds / "val.jsonl").read_text().splitlines()]
    assert len(train) + len(val) == 6 and val, "3 videos x 2 shots -> 6 clips, with a validation split"
    for row in train + val:
        assert (ds / row["path"]).is_file()
        assert row["num_frames"] >= 49 and row["fps"] == 8.0
        shot = row["meta"]["shot"]  # the generator's ground truth for this clip agrees with its caption
        assert row["text"] == synthetic.caption_of(shot)
    stats = json.loads((ds / "stats.json").read_text())
    assert stats["clips"]["train"] == len(train)
    assert {p.name for p in (ds / "stats").glob("*.png")} == {"duration.png", "num_frames.png", "caption_tokens.png",
                                                         "resolution.png"}

    assert job_counts(snakemake(repo_copy, "-n", *DATA, "--configfile", TINY).stdout) == {}

    motions = sorted(r["scores"]["motion"] for r in train + val)
    threshold = (motions[0] + motions[1]) / 2  # rejects exactly the stillest clip
    tweak = repo_copy / "tweak.yaml"
    tweak.write_text(f"datasets: {{shapes: {{filter: {{min_motion: {threshold}}}}}}}\n")
    dry = snakemake(repo_copy, "-n", *DATA, "--configfile", TINY, str(tweak)).stdout
    assert job_counts(dry) == {"filter": 1, "caption": 1, "dataset": 1}

    snakemake(repo_copy, *DATA, "--configfile", TINY, str(tweak))
    stats = json.loads((ds / "stats.json").read_text())
    assert stats["clips"]["train"] + stats["clips"]["val"] == 5
    assert stats["reject_reasons"] == {"motion": 1}

    # A person runs a stage by name and gets what the rule made: same config, same default paths.
    tables = ["data/shards/shapes/s00000/filtered.jsonl", "data/shards/shapes/s00000/captioned.jsonl", *DATA[:2]]
    made = {t: (repo_copy / t).read_bytes() for t in tables}
    for stage, where in (("filter", ["--shard", "s00000"]), ("caption", ["--shard", "s00000"]), ("dataset", [])):
        subprocess.run([sys.executable, "-m", "longvid", stage, "--dataset", "shapes", *where,
                        "--configfile", TINY, str(tweak)], cwd=repo_copy, check=True, capture_output=True)
    assert {t: (repo_copy / t).read_bytes() for t in tables} == made
    assert job_counts(snakemake(repo_copy, "-n", *DATA, "--configfile", TINY, str(tweak)).stdout) == {}


def test_invalid_config_fails_before_any_job_naming_the_key(repo_copy):
    bad = repo_copy / "bad.yaml"
    bad.write_text("datasets: {shapes: {split: {treshold: 3}}}\n")
    proc = snakemake(repo_copy, "-n", "--configfile", str(bad), check=False)
    assert proc.returncode != 0
    assert "config/datasets/shapes.yaml: split.treshold: unknown key" in proc.stdout + proc.stderr
    bad.write_text("datasets: {shapes: {filter: {min_frames: 48}}}\n")
    proc = snakemake(repo_copy, "-n", "--configfile", str(bad), check=False)
    assert "filter.min_frames: 48 is not 8N+1" in proc.stdout + proc.stderr
    bad.write_text("datasets: {shapes: {source: {num_vidoes: 3}}}\n")
    proc = snakemake(repo_copy, "-n", "--configfile", str(bad), check=False)
    assert proc.returncode != 0 and "config/datasets/shapes.yaml: source.num_vidoes: unknown key" in proc.stdout + proc.stderr
    bad.write_text("experiments: {tiny: {model: {overrides: {attn_windw: 4}}}}\n")
    proc = snakemake(repo_copy, "-n", "--configfile", str(bad), check=False)
    assert proc.returncode != 0
    assert "config/experiments/tiny.yaml: model.overrides.attn_windw" in proc.stdout + proc.stderr
    assert "Job stats" not in proc.stdout  # nothing was planned, let alone run


def test_a_broken_unused_dataset_file_does_not_break_other_targets(repo_copy):
    (repo_copy / "config/datasets/broken.yaml").write_text("source: {type: local}\nfilter: {min_frames: 48}\n")
    assert "Job stats" in snakemake(repo_copy, "-n").stdout
    proc = snakemake(repo_copy, "-n", "data/datasets/broken/train.jsonl", check=False)
    assert proc.returncode != 0 and "config/datasets/broken.yaml" in proc.stdout + proc.stderr


def test_the_cluster_command_plans_the_5b_experiment(repo_copy):
    """`snakemake --profile profiles/slurm results/samples/5b_sft`, dry: every stage up to sampling, each
    handed the stage's resolved config (the jobs' resources and launchers: tests/test_slurm_plan.py)."""
    proc = snakemake(repo_copy, "--profile", "profiles/slurm", "-n", "results/samples/5b_sft")
    assert job_counts(proc.stdout) == {"fetch": 1, "shard": 1, "dataset": 1, "encode": 1, "train": 1, "sample": 1}
    assert re.search(r"longvid train --experiment 5b_sft --stage-config results/config/", proc.stdout)
    assert "--out-dir results/samples/5b_sft" in proc.stdout


def test_lint_format_dag_and_every_rule_has_log_and_benchmark(repo_copy):
    # The venv is the deployment (README: no conda envs), so lint's per-rule conda recommendation is
    # expected; any other lint is a failure.
    lint = snakemake(repo_copy, "--lint", check=False)
    found = re.findall(r"^\s+\* (.+?):?$", lint.stdout + lint.stderr, re.M)
    assert found and set(found) == {"Specify a conda environment or container for each rule."}, lint.stdout[-3000:]
    fmt = subprocess.run(["snakefmt", "--check", "workflow/"], cwd=repo_copy, capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stderr
    assert snakemake(repo_copy, "--dag").stdout.lstrip().startswith("digraph")
    rules = (repo_copy / "workflow/rules").glob("*.smk")
    for smk in rules:
        blocks = re.split(r"^(?=(?:rule|checkpoint) \w+:)", smk.read_text(), flags=re.M)[1:]
        for block in blocks:
            name = block.split(":")[0]
            assert "\n    log:" in block and "\n    benchmark:" in block, f"{smk.name}: {name}"


def test_a_folder_without_captions_fails_with_the_reason_not_a_missing_output(repo_copy, tmp_path):
    from longvid.shapes import render_video

    videos = tmp_path / "my videos"
    videos.mkdir()
    for i, color in enumerate(("red", "blue")):
        shot = {"shape": "circle", "color": color, "direction": "left", "background": "black",
                "start_frame": 0, "end_frame": 56}
        render_video(videos / f"clip{i}.mp4", [shot], 8.0, 64, 96)
    (repo_copy / "config/datasets/mine.yaml").write_text(
        f"source: {{type: local, path: '{videos}'}}\nsplit: {{detector: none, cut: false}}\n")
    proc = snakemake(repo_copy, "data/datasets/mine/train.jsonl", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "MissingOutputException" not in out
    assert ("longvid dataset: error: data/datasets/mine: 0 of 2 clips kept: 2 uncaptioned — caption.backend "
            "passthrough needs source captions") in out
