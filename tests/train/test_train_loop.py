"""The training loop end to end on the tiny hybrid model, as `python -m longvid train` on data this
session built (conftest.shapes_repo): resume after SIGKILL/SIGTERM is bit-identical, two processes
(torchrun, gloo) match one process on the same global batch, DeepSpeed resumes, a change of settings
starts over, mixed-size buckets train and resume."""

import json
import signal
import subprocess
import sys

import pytest
import torch

from conftest import (SHORT_TRAIN, assert_same_weights, final_weights, interrupt, longvid_cmd, metric_steps, run_ok,
                      steps_logged, train_cmd, train_env, write_experiment)

pytestmark = pytest.mark.slow


def short(repo, **train) -> str:
    """The short tiny run with `train` settings changed."""
    return write_experiment(repo, train={**SHORT_TRAIN, **train})


@pytest.mark.parametrize("sig,at_step", [(signal.SIGKILL, 5), (signal.SIGKILL, 9), (signal.SIGTERM, 7)],
                         ids=["sigkill-at-5", "sigkill-at-9", "sigterm-at-7"])
def test_interrupted_run_resumes_bit_identical(shapes_repo, shapes_latents, short_run, tmp_path, sig, at_step):
    name, reference = short_run
    cmd = train_cmd(shapes_repo, name, tmp_path, shapes_latents)
    code = interrupt(cmd, shapes_repo, tmp_path, at_step, sig).returncode
    if sig == signal.SIGTERM:
        assert code == 75, "SIGTERM must save a checkpoint and exit 75 (retry me)"
        assert (tmp_path / "checkpoints/latest").read_text().strip() == f"step_{steps_logged(tmp_path):08d}"
    else:
        assert code == -signal.SIGKILL
    assert not (tmp_path / "final").exists()
    run_ok(cmd, shapes_repo)
    assert_same_weights(final_weights(tmp_path), reference)
    assert metric_steps(tmp_path) == list(range(1, 13)), "the metrics log has each step exactly once"


def test_two_processes_match_one_on_the_same_global_batch(shapes_repo, shapes_latents, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    run_ok(train_cmd(shapes_repo, short(shapes_repo, steps=4, micro_batch=4), one, shapes_latents), shapes_repo)
    cmd = train_cmd(shapes_repo, short(shapes_repo, steps=4, micro_batch=2), two, shapes_latents)
    assert cmd[1:3] == ["-m", "longvid"]
    run_ok([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone",
            "-m", "longvid.cli", *cmd[3:]], shapes_repo)
    a, b = final_weights(one), final_weights(two)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    losses = [[json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
              for run in (one, two)]
    assert len(set(losses[0])) == 4, "the model trained (the loss moved)"
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), rtol=1e-5, atol=1e-6)


def test_deepspeed_zero2_bf16_resumes_after_sigterm(shapes_repo, shapes_latents, tmp_path):
    """Real DeepSpeed (ZeRO-2, bf16, gloo on CPU): preempted at step 4, resumed, equals a clean run."""
    name = short(shapes_repo, steps=6, deepspeed=True, precision="bf16")
    clean, resumed = tmp_path / "clean", tmp_path / "resumed"
    run_ok(train_cmd(shapes_repo, name, clean, shapes_latents), shapes_repo)
    cmd = train_cmd(shapes_repo, name, resumed, shapes_latents)
    assert interrupt(cmd, shapes_repo, resumed, 4, signal.SIGTERM).returncode == 75
    run_ok(cmd, shapes_repo)
    assert_same_weights(final_weights(resumed), final_weights(clean))


def test_changed_settings_start_over_but_more_steps_continue(shapes_repo, shapes_latents, tmp_path):
    """The run directory outlives a change of settings (it is not a Snakemake output): checkpoints of
    other settings must not be resumed, while asking for more steps must continue the run."""
    def train(**settings):
        return run_ok(train_cmd(shapes_repo, short(shapes_repo, **settings), tmp_path, shapes_latents), shapes_repo)

    train(steps=6)
    longer = train(steps=9)
    assert "resumed from" in longer.stderr and "superseded" not in longer.stderr
    assert metric_steps(tmp_path) == list(range(1, 10))

    other = train(steps=9, lr=3e-4)
    assert "made by another run" in other.stderr and "training from step 0" in other.stderr
    assert "resumed from" not in other.stderr
    kept = tmp_path / "superseded"
    assert (kept / "checkpoints/latest").read_text().strip() == "step_00000009"
    assert len((kept / "metrics.jsonl").read_text().splitlines()) == 9
    assert metric_steps(tmp_path) == list(range(1, 10))  # the new run's own curve


# ---- mixed sizes (data.buckets) ------------------------------------------------------------------
BUCKETS = [[17, 48, 64], [17, 32, 64]]  # 4:3 and 2:1
MAX_TOKENS = 120


def bucketed(repo, cached: bool = True, buckets=BUCKETS) -> str:
    return write_experiment(repo, train={**SHORT_TRAIN, "steps": 8},
                            data={"buckets": buckets, "max_tokens": MAX_TOKENS, "latent_cache": cached})


def closest_bucket(width: int, height: int) -> int:
    """The bucket of closest aspect (every clip has the 17 frames of both)."""
    return min(range(len(BUCKETS)), key=lambda b: abs(BUCKETS[b][1] / BUCKETS[b][2] - height / width))


@pytest.fixture(scope="module")
def bucketed_latents(shapes_repo):
    """`longvid encode` with buckets (default paths in the copy): every clip at its bucket's size,
    the bucket in the index."""
    name = bucketed(shapes_repo)
    run_ok(longvid_cmd("encode", name, shapes_repo), shapes_repo)
    return shapes_repo / "data/latents" / name / "train.jsonl"


@pytest.mark.parametrize("cached", [False, True], ids=["on-the-fly", "latent-cache"])
def test_bucketed_training_resumes_bit_identical(shapes_repo, bucketed_latents, tmp_path, cached):
    """Mixed-size training (data.buckets): batches sized by the token budget, decoded on the fly or
    read from the bucketed latent cache, and a SIGKILL mid-run still resumes to the uninterrupted weights."""
    clips = [json.loads(line) for line in (shapes_repo / "data/datasets/shapes/train.jsonl").read_text().splitlines()]
    sizes = {(row["width"], row["height"]) for row in clips}
    assert len(sizes) == 1, f"the test data has one size, so every clip lands in one bucket: {sizes}"
    (width, height), = sizes
    want = closest_bucket(width, height)
    rows = [json.loads(line) for line in bucketed_latents.read_text().splitlines()]
    assert len(rows) == len(clips) and {row["bucket"] for row in rows} == {want}

    name, source = bucketed(shapes_repo, cached), bucketed_latents if cached else None
    ref = tmp_path / "ref"
    done = run_ok(train_cmd(shapes_repo, name, ref, source), shapes_repo)
    # the tiny model: VAE compression 4 (time) x 8 (space), patch 2; 17x48x64 px -> 5x3x4 = 60 tokens,
    # so 2 per batch under 120
    frames, h, w = BUCKETS[want]
    tokens = ((frames - 1) // 4 + 1) * (h // 16) * (w // 16)
    expect = f"'frames': {frames}, 'height': {h}, 'width': {w}, 'tokens': {tokens}, 'batch_size': {MAX_TOKENS // tokens}"
    assert expect in done.stderr
    rates = [json.loads(line) for line in (ref / "metrics.jsonl").read_text().splitlines()]
    assert rates[-1]["tokens_per_s"] / rates[-1]["samples_per_s"] == pytest.approx(tokens, rel=1e-6)

    run = tmp_path / "run"
    cmd = train_cmd(shapes_repo, name, run, source)
    assert interrupt(cmd, shapes_repo, run, 4, signal.SIGKILL).returncode == -signal.SIGKILL
    run_ok(cmd, shapes_repo)
    assert_same_weights(final_weights(run), final_weights(ref))


def test_buckets_need_a_token_budget_in_the_config():
    from longvid import config
    from longvid.io import InputError

    with pytest.raises(InputError, match=r"config/experiments/tiny\.yaml: data\.max_tokens: required"):
        config.experiment("tiny", {"data": {"buckets": [[17, 48, 64]]}})


def test_buckets_are_checked_against_the_windows_and_the_cache(shapes_repo, shapes_latents, tmp_path):
    # 25 frames -> 7 latent frames: 1 prefix + 6, not a multiple of windows of 4
    name = bucketed(shapes_repo, cached=False, buckets=[[25, 48, 64]])
    proc = run_ok_or(train_cmd(shapes_repo, name, tmp_path, None), shapes_repo)
    assert proc.returncode == 2 and "data.buckets[0]" in proc.stderr and "attn_window=4" in proc.stderr, proc.stderr
    proc = run_ok_or(train_cmd(shapes_repo, bucketed(shapes_repo), tmp_path, shapes_latents), shapes_repo)
    assert proc.returncode == 2 and "written without data.buckets" in proc.stderr, proc.stderr


def run_ok_or(cmd, cwd):
    """Run to any exit status (output captured as text)."""
    return subprocess.run(cmd, cwd=cwd, env=train_env(), capture_output=True, text=True, timeout=600)
