"""Shared fixtures: a private copy of the repository to run Snakemake in, and PATH to the venv."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
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


# ---- training on data a test session builds itself (tests/train) --------------------------------
# Nothing here reads the checkout's data/ or results/: the shapes dataset is made by the real workflow
# in a private copy, and test experiments are YAML files written into that copy's config/experiments/.

SHAPES_CONFIG = "tests/data/tiny-config.yaml"  # 3 synthetic videos x 2 shots -> 6 clips
# A short deterministic tiny run: a checkpoint every 3 steps, a metrics line every step.
SHORT_TRAIN = {"steps": 12, "save_every": 3, "log_every": 1, "deterministic": True}
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
               "GROUP_RANK", "TORCHELASTIC_RUN_ID")


def train_env(**extra: str) -> dict[str, str]:
    """The environment of a training subprocess: one OpenMP thread (2 threads per process collapse
    an oversubscribed 2-core machine), no W&B, no launcher variables leaking in from CI."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS and not k.startswith("SLURM_")}
    return {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled", **extra}


def write_experiment(repo: Path, base: str = "tiny", **sections: dict) -> str:
    """config/experiments/<name>.yaml in `repo`: experiment `base` with `sections` deep-merged over it
    (`train={"steps": 4}`); named by its content, so equal settings share one file. Returns the name."""
    import yaml

    from longvid.config import deep_merge, digest

    cfg = deep_merge(yaml.safe_load((repo / "config/experiments" / f"{base}.yaml").read_text()), sections)
    name = f"test-{digest(cfg)}"
    path = repo / "config/experiments" / f"{name}.yaml"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(cfg, sort_keys=False))
        tmp.replace(path)
    return name


def longvid_cmd(stage: str, experiment: str, repo: Path, *args: str) -> list[str]:
    """`python -m longvid <stage> --experiment NAME --configfile <repo>/config/config.yaml ...`; run it with
    cwd=repo, so that default paths (longvid.layout) are the copy's."""
    return [sys.executable, "-m", "longvid", stage, "--experiment", experiment,
            "--configfile", str(repo / "config/config.yaml"), *map(str, args)]


def train_cmd(repo: Path, experiment: str, run_dir: Path, latents: Path | None = None) -> list[str]:
    """`longvid train` into `run_dir` on the copy's dataset, from the latent index `latents`; without
    one the experiment must encode on the fly (data.latent_cache: false)."""
    return longvid_cmd("train", experiment, repo, "--run-dir", run_dir, *(["--latents", latents] if latents else []))


def run_ok(cmd: list[str], cwd: Path, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run to exit status 0 (else fail with the end of its stderr); output captured as text."""
    proc = subprocess.run(cmd, cwd=cwd, env=env or train_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stderr[-5000:]}")
    return proc


def steps_logged(run_dir: Path) -> int:
    """The last step in run_dir/metrics.jsonl (0 before the first complete line)."""
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return json.loads(lines[-1])["step"] if lines and lines[-1].endswith("}") else 0


def metric_steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def interrupt(cmd: list[str], cwd: Path, run_dir: Path, at_step: int, sig: int,
              timeout: float = 300) -> subprocess.CompletedProcess:
    """Start `cmd`, send `sig` once run_dir's metrics reach `at_step` (SIGKILL: to its whole process
    group), and return how it ended (returncode, stderr). Fails if it ended before it was signalled."""
    import tempfile

    with tempfile.TemporaryFile("w+") as err:  # not a pipe: nobody reads it while the run goes on
        proc = subprocess.Popen(cmd, cwd=cwd, env=train_env(), stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)
        try:
            deadline = time.time() + timeout
            while time.time() < deadline and proc.poll() is None and steps_logged(run_dir) < at_step:
                time.sleep(0.02)
            if proc.poll() is not None:
                err.seek(0)
                raise AssertionError(f"the run ended (exit {proc.returncode}) before step {at_step} could be "
                                     f"interrupted:\n{err.read()[-5000:]}")
            if sig == signal.SIGKILL:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
            proc.wait(timeout=timeout)
            err.seek(0)
            return subprocess.CompletedProcess(cmd, proc.returncode, None, err.read())
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def final_weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run_dir / "final/model.safetensors")


def assert_same_weights(got: dict, want: dict) -> None:
    import torch

    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), f"{k} differs"


@pytest.fixture(scope="session")
def shapes_repo(tmp_path_factory) -> Path:
    """A copy of the checkout in which the real workflow built the shapes dataset (SHAPES_CONFIG:
    data/datasets/shapes/train.jsonl of 160x120 clips); tests add experiments to its config/."""
    repo = copy_repo(tmp_path_factory.mktemp("shapes") / "repo")
    snakemake(repo, "data/datasets/shapes/train.jsonl", "--configfile", SHAPES_CONFIG)
    return repo


@pytest.fixture(scope="session")
def shapes_latents(shapes_repo) -> Path:
    """`longvid encode --experiment tiny` in shapes_repo, at the layout's default paths (the cache in
    data/latents/cache): the latent index every experiment with tiny's data and encoders trains from."""
    run_ok(longvid_cmd("encode", "tiny", shapes_repo), shapes_repo)
    index = shapes_repo / "data/latents/tiny/train.jsonl"
    assert index.is_file(), "encode wrote no index at the layout's default path"
    return index


@pytest.fixture(scope="session")
def short_run(shapes_repo, shapes_latents, tmp_path_factory) -> tuple[str, dict]:
    """(experiment name, final weights) of an uninterrupted SHORT_TRAIN run of tiny from
    shapes_latents: what every interrupted and resumed run of it must end with, bit for bit."""
    name = write_experiment(shapes_repo, train=SHORT_TRAIN)
    run = tmp_path_factory.mktemp("short-run")
    run_ok(train_cmd(shapes_repo, name, run, shapes_latents), shapes_repo)
    assert metric_steps(run) == list(range(1, SHORT_TRAIN["steps"] + 1))
    return name, final_weights(run)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """The local one-node Slurm (tests/slurmkit.py), started once for the session, stopped by PID."""
    import slurmkit

    state = tmp_path_factory.mktemp("slurm")
    yield slurmkit.start_cluster(state)
    slurmkit.stop_cluster(state)
