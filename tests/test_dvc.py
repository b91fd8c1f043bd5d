"""Datasets versioned with real DVC and a local remote: publish in one clone, pull in another, and
the workflow there has nothing to rebuild."""

import os
import subprocess
from pathlib import Path

import pytest

from conftest import snakemake
from test_workflow import DATA, TINY, job_counts

pytestmark = pytest.mark.slow

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def sh(cwd: Path, *cmd: str) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, **GIT_ENV})
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_publish_pull_and_nothing_to_redo(repo_copy, tmp_path):
    a = repo_copy
    sh(a, "git", "init", "-q")
    sh(a, "git", "add", "-A")
    sh(a, "git", "commit", "-qm", "init")
    sh(a, "dvc", "remote", "add", "-d", "store", str(tmp_path / "remote"))
    snakemake(a, *DATA, "--configfile", TINY)
    snakemake(a, "data/datasets/shapes.dvc", "--configfile", TINY)  # the publish rule: dvc add + push
    assert (tmp_path / "remote" / "files").is_dir(), "nothing was pushed to the remote"
    sh(a, "git", "add", "-A")
    sh(a, "git", "commit", "-qm", "publish shapes")
    # Here Snakemake's metadata still says the dataset was built from shards, so it runs one cheap
    # `dvc pull` (a no-op) to switch the dataset to its versioned form; nothing is rebuilt.
    assert job_counts(snakemake(a, "-n", *DATA, "--configfile", TINY).stdout) in ({}, {"dvc_pull": 1})
    snakemake(a, *DATA, "--configfile", TINY)
    assert job_counts(snakemake(a, "-n", *DATA, "--configfile", TINY).stdout) == {}

    b = tmp_path / "b"
    sh(tmp_path, "git", "clone", "-q", str(a), str(b))
    assert not (b / "data/datasets/shapes/train.jsonl").exists()
    sh(b, "dvc", "pull", "data/datasets/shapes.dvc")
    for f in ("train.jsonl", "val.jsonl", "stats.json"):
        assert (b / "data/datasets/shapes" / f).read_bytes() == (a / "data/datasets/shapes" / f).read_bytes()
    assert job_counts(snakemake(b, "-n", *DATA, "--configfile", TINY).stdout) == {}

    # Without a manual pull, the workflow itself pulls the versioned dataset instead of rebuilding it.
    c = tmp_path / "c"
    sh(tmp_path, "git", "clone", "-q", str(a), str(c))
    assert job_counts(snakemake(c, "-n", *DATA, "--configfile", TINY).stdout) == {"dvc_pull": 1}
    snakemake(c, *DATA, "--configfile", TINY)
    clips = sorted(p.name for p in (c / "data/datasets/shapes/clips").glob("*.mp4"))
    assert clips == sorted(p.name for p in (a / "data/datasets/shapes/clips").glob("*.mp4")) and clips
    assert not (c / "data/raw").exists(), "a pulled dataset must not be fetched or rebuilt"
