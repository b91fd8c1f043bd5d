"""Shared fixtures: a private copy of the repository to run Snakemake in, and PATH to the venv."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

# Every subprocess (snakemake, longvid, dvc) must come from this venv, whatever the caller's PATH.
os.environ["PATH"] = f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


def tracked_files(repo: Path = REPO) -> list[str]:
    """Files git would ship: tracked plus untracked-but-not-ignored (so uncommitted work is tested)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=repo, capture_output=True, check=True).stdout
    return [f for f in out.decode().split("\0") if f and (repo / f).is_file()]


def copy_repo(dst: Path) -> Path:
    for rel in tracked_files():
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)
    return dst


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """A fresh copy of the checkout (no data, no .snakemake) to run the workflow in."""
    return copy_repo(tmp_path / "repo")


def snakemake(cwd: Path, *args: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(["snakemake", "--cores", "2", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc
