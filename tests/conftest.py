"""Shared fixtures: a private copy of the repository to run Snakemake in, and PATH to the venv."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
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


def browser_dom(html: Path, profile_dir: Path, budget_ms: int = 5000) -> str:
    """The DOM of `html` after Debian's chromium (headless, offline) has loaded it and run its scripts."""
    exe = shutil.which("chromium")
    assert exe, "chromium is missing: `make setup` (workflow/scripts/setup.sh) installs it"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile_dir}", f"--virtual-time-budget={budget_ms}", "--dump-dom"]
    proc = subprocess.run([exe, *flags, html.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "<html" in proc.stdout, f"chromium failed:\n{proc.stderr[-3000:]}"
    return proc.stdout


class MediaTags(HTMLParser):
    """Attributes of every <video> and <img> in a document (`feed` it the DOM)."""

    def __init__(self):
        super().__init__()
        self.videos: list[dict] = []
        self.images: list[dict] = []

    def handle_starttag(self, tag, attrs):
        if tag == "video":
            self.videos.append(dict(attrs))
        elif tag == "img":
            self.images.append(dict(attrs))


def write_config(root: Path, datasets: dict | None = None, experiments: dict | None = None) -> Path:
    """A config tree under `root` (config/config.yaml, config/datasets/*.yaml, config/experiments/*.yaml)
    for running stages by name (`--configfile`) on test data; returns the config.yaml path."""
    import yaml

    for kind, entries in (("datasets", datasets or {}), ("experiments", experiments or {})):
        for name, cfg in entries.items():
            path = root / "config" / kind / f"{name}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(cfg))
    top = root / "config" / "config.yaml"
    top.write_text(yaml.safe_dump({"datasets": {n: {} for n in datasets or {}},
                                   "experiments": {n: {} for n in experiments or {}}}))
    return top


def stage_args(kind: str, name: str, stage: str, cfg: dict, root: Path) -> list[str]:
    """`--experiment|--dataset NAME --stage-config FILE` for calling a stage on a config dict, as the
    workflow's rules do (the file written under `root`)."""
    from longvid import config as lvconfig

    rel = lvconfig.write_stage_config(kind, name, stage, lvconfig.stage_inputs(kind, cfg, stage), root)
    return [f"--{kind}", name, "--stage-config", str(root / rel)]
