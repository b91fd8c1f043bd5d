"""The training loop end to end on the tiny hybrid model: resume after SIGKILL/SIGTERM is
bit-identical, and two processes (torchrun, gloo) match one process on the same global batch."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}


def experiment(**train) -> str:
    exp = json.loads(subprocess.run(["longvid", "config", "--experiment", "tiny"], cwd=REPO, capture_output=True,
                                    text=True, check=True).stdout)
    exp["train"].update({"steps": 12, "save_every": 3, "log_every": 1, "deterministic": True, **train})
    return json.dumps(exp)


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    """The encode stage's cache of the tiny dataset (built by a real workflow run if missing)."""
    ds = REPO / "data/datasets/shapes"
    if not (ds / "train.jsonl").exists():
        subprocess.run(["snakemake", "--cores", "2", "data/datasets/shapes/train.jsonl"], cwd=REPO, check=True,
                       capture_output=True)
    d = tmp_path_factory.mktemp("latents")
    subprocess.run(["longvid", "encode", "--experiment", experiment(), "--dataset-dir", str(ds), "--cache",
                    str(d / "cache"), "--index", str(d / "train.jsonl")], check=True, capture_output=True, env=ENV)
    return d / "train.jsonl"


def train_cmd(run_dir: Path, latents: Path | None, exp: str) -> list[str]:
    return ["longvid", "train", "--experiment", exp, "--dataset-dir", str(REPO / "data/datasets/shapes"),
            "--run-dir", str(run_dir), *(["--latents", str(latents)] if latents else [])]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "final/model.safetensors")


def steps_logged(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return json.loads(lines[-1])["step"] if lines and lines[-1].endswith("}") else 0


def interrupt(cmd: list[str], run_dir: Path, at_step: int, sig: int) -> int:
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and steps_logged(run_dir) < at_step:
        time.sleep(0.02)
    if sig == signal.SIGKILL:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    return proc.wait(timeout=300)


@pytest.fixture(scope="module")
def reference(latents, tmp_path_factory):
    run = tmp_path_factory.mktemp("reference")
    subprocess.run(train_cmd(run, latents, experiment()), env=ENV, check=True, capture_output=True)
    return weights(run)


@pytest.mark.parametrize("sig,at_step", [(signal.SIGKILL, 5), (signal.SIGKILL, 9), (signal.SIGTERM, 7)])
def test_interrupted_run_resumes_bit_identical(latents, reference, tmp_path, sig, at_step):
    cmd = train_cmd(tmp_path, latents, experiment())
    code = interrupt(cmd, tmp_path, at_step, sig)
    if sig == signal.SIGTERM:
        assert code == 75, "SIGTERM must save a checkpoint and exit 75 (retry me)"
        assert (tmp_path / "checkpoints/latest").read_text().strip() == f"step_{steps_logged(tmp_path):08d}"
    assert not (tmp_path / "final").exists()
    subprocess.run(cmd, env=ENV, check=True, capture_output=True)
    resumed = weights(tmp_path)
    assert resumed.keys() == reference.keys()
    for k in reference:
        assert torch.equal(resumed[k], reference[k]), k
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13)), "the metrics log has each step exactly once"


def test_two_processes_match_one_on_the_same_global_batch(latents, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(train_cmd(one, latents, experiment(steps=4, micro_batch=4)), env=ENV, check=True,
                   capture_output=True)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone",
                           "-m", "longvid.cli", *train_cmd(two, latents, experiment(steps=4, micro_batch=2))[1:]],
                          env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = weights(one), weights(two)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    losses = [[json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
              for run in (one, two)]
    assert len(set(losses[0])) == 4, "the model trained (the loss moved)"
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), rtol=1e-5, atol=1e-6)


def test_deepspeed_zero2_bf16_resumes_after_sigterm(latents, tmp_path):
    """Real DeepSpeed (ZeRO-2, bf16, gloo on CPU): preempted at step 4, resumed, equals a clean run."""
    exp = experiment(steps=6, deepspeed=True, precision="bf16")
    clean, resumed = tmp_path / "clean", tmp_path / "resumed"
    subprocess.run(train_cmd(clean, latents, exp), env=ENV, check=True, capture_output=True)
    assert interrupt(train_cmd(resumed, latents, exp), resumed, 4, signal.SIGTERM) == 75
    subprocess.run(train_cmd(resumed, latents, exp), env=ENV, check=True, capture_output=True)
    a, b = weights(clean), weights(resumed)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_changed_settings_start_over_but_more_steps_continue(latents, tmp_path):
    """The run directory outlives a change of settings (it is not a Snakemake output): checkpoints of
    other settings must not be resumed, while asking for more steps must continue the run."""
    first = experiment(steps=6)
    subprocess.run(train_cmd(tmp_path, latents, first), env=ENV, check=True, capture_output=True)
    longer = subprocess.run(train_cmd(tmp_path, latents, experiment(steps=9)), env=ENV, check=True,
                            capture_output=True, text=True)
    assert "resumed from" in longer.stderr and "superseded" not in longer.stderr
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == list(
        range(1, 10))

    other = subprocess.run(train_cmd(tmp_path, latents, experiment(steps=9, lr=3e-4)), env=ENV, check=True,
                           capture_output=True, text=True)
    assert "made by another run" in other.stderr and "training from step 0" in other.stderr
    assert "resumed from" not in other.stderr
    kept = tmp_path / "superseded"
    assert (kept / "checkpoints/latest").read_text().strip() == "step_00000009"
    assert len((kept / "metrics.jsonl").read_text().splitlines()) == 9
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 9  # the new run's own curve


def bucketed(**train) -> str:
    exp = json.loads(experiment(steps=8, **train))
    exp["data"].update({"buckets": [[17, 48, 64], [17, 32, 64]], "max_tokens": 120})
    return json.dumps(exp)


@pytest.fixture(scope="module")
def bucketed_latents(tmp_path_factory):
    """`longvid encode` with buckets: every clip at its bucket's size, the bucket in the index."""
    d = tmp_path_factory.mktemp("bucketed-latents")
    subprocess.run(["longvid", "encode", "--experiment", bucketed(), "--dataset-dir", str(REPO / "data/datasets/shapes"),
                    "--cache", str(d / "cache"), "--index", str(d / "train.jsonl")], check=True, capture_output=True,
                   env=ENV)
    return d / "train.jsonl"


@pytest.mark.parametrize("cached", [False, True], ids=["on-the-fly", "latent-cache"])
def test_bucketed_training_resumes_bit_identical(bucketed_latents, tmp_path, cached):
    """Mixed-size training (data.buckets): batches sized by the token budget, decoded on the fly or
    read from the bucketed latent cache, and a SIGKILL mid-run still resumes to the uninterrupted weights."""
    source = bucketed_latents if cached else None
    rows = [json.loads(line) for line in bucketed_latents.read_text().splitlines()]
    assert {row["bucket"] for row in rows} == {0}  # 160x120 clips: the 4:3 bucket
    ref = tmp_path / "ref"
    done = subprocess.run(train_cmd(ref, source, bucketed()), env=ENV, check=True, capture_output=True, text=True)
    # 17 frames x 48x64 px = 60 tokens, so 2 per batch under 120
    assert "'frames': 17, 'height': 48, 'width': 64, 'tokens': 60, 'batch_size': 2" in done.stderr
    rates = [json.loads(line) for line in (ref / "metrics.jsonl").read_text().splitlines()]
    assert rates[-1]["tokens_per_s"] / rates[-1]["samples_per_s"] == pytest.approx(60, rel=1e-6)

    run = tmp_path / "run"
    interrupt(train_cmd(run, source, bucketed()), run, 4, signal.SIGKILL)
    subprocess.run(train_cmd(run, source, bucketed()), env=ENV, check=True, capture_output=True)
    got, want = weights(run), weights(ref)
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_buckets_need_a_token_budget_in_the_config():
    from longvid import config
    from longvid.io import InputError

    with pytest.raises(InputError, match=r"config/experiments/tiny.yaml: data: 'max_tokens' is a required"):
        config.experiment("tiny", {"data": {"buckets": [[17, 48, 64]]}})


def test_buckets_are_checked_against_the_windows_and_the_cache(latents, tmp_path):
    exp = json.loads(bucketed())
    exp["data"]["buckets"] = [[25, 48, 64]]  # 7 latent frames: 1 prefix + 6, not a multiple of windows of 4
    proc = subprocess.run(train_cmd(tmp_path, None, json.dumps(exp)), env=ENV, capture_output=True, text=True)
    assert proc.returncode == 2 and "data.buckets[0]: " in proc.stderr and "attn_window=4" in proc.stderr
    proc = subprocess.run(train_cmd(tmp_path, latents, bucketed()), env=ENV, capture_output=True, text=True)
    assert proc.returncode == 2 and "written without data.buckets" in proc.stderr
