"""The data half end to end through real Snakemake runs on a tiny synthetic dataset."""

import json
import re
import subprocess

import pytest

from conftest import REPO, snakemake
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
    snakemake(repo_copy, *DATA, "--configfile", TINY)
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
    assert {p.name for p in (ds / "stats").glob("*.png")} == {"duration.png", "num_frames.png", "caption_length.png",
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


def test_invalid_config_fails_before_any_job_naming_the_key(repo_copy):
    bad = repo_copy / "bad.yaml"
    bad.write_text("datasets: {shapes: {split: {treshold: 3}}}\n")
    proc = snakemake(repo_copy, "-n", "--configfile", str(bad), check=False)
    assert proc.returncode != 0
    assert "config/datasets/shapes.yaml: split.treshold: unknown key" in proc.stdout + proc.stderr
    bad.write_text("datasets: {shapes: {filter: {min_frames: 48}}}\n")
    proc = snakemake(repo_copy, "-n", "--configfile", str(bad), check=False)
    assert "filter.min_frames: 48 is not 8N+1" in proc.stdout + proc.stderr


def test_the_cluster_command_plans_the_5b_experiment(repo_copy):
    """`snakemake --profile profiles/slurm results/samples/5b_sft`, dry: every stage up to sampling, the
    GPU stages launched with one srun task per GPU."""
    proc = snakemake(repo_copy, "--profile", "profiles/slurm", "-n", "results/samples/5b_sft")
    assert job_counts(proc.stdout) == {"fetch": 1, "shard": 1, "dataset": 1, "encode": 1, "train": 1, "sample": 1}
    assert "srun -n 8 longvid train" in proc.stdout and "srun -n 8 longvid sample" in proc.stdout
    assert "--out-dir results/samples/5b_sft" in proc.stdout


def test_lint_format_dag_and_every_rule_has_log_and_benchmark():
    lint = snakemake(REPO, "--lint")
    assert "Congratulations" in lint.stdout + lint.stderr
    fmt = subprocess.run(["snakefmt", "--check", "workflow/"], cwd=REPO, capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stderr
    assert snakemake(REPO, "--dag").stdout.lstrip().startswith("digraph")
    rules = (REPO / "workflow/rules").glob("*.smk")
    for smk in rules:
        blocks = re.split(r"^(?=(?:rule|checkpoint) \w+:)", smk.read_text(), flags=re.M)[1:]
        for block in blocks:
            name = block.split(":")[0]
            assert "\n    log:" in block and "\n    benchmark:" in block, f"{smk.name}: {name}"
