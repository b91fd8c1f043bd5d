"""metrics.jsonl is complete and duplicate-free across resumes; wandb stays offline and secret-free."""

import json
from pathlib import Path

import pytest

from longvid.train.metrics import MetricsLogger, Throughput, progress, redact, truncate_after


def steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_lines_are_written_and_flushed_per_step(tmp_path):
    m = MetricsLogger(tmp_path, enabled_wandb=False)
    speed = Throughput()
    for step in range(1, 4):
        speed.update(samples=8, tokens=8 * 1024)
        m.log(step, loss=1.0 / step, lr=1e-3, **speed.rates())
        # readable before close: a killed run keeps what it logged
        assert steps(tmp_path) == list(range(1, step + 1))
    m.close()
    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["loss"] == pytest.approx(1 / 3) and row["lr"] == 1e-3 and row["time"] > 1.7e9
    assert row["tokens_per_s"] == pytest.approx(1024 * row["samples_per_s"]) and row["samples_per_s"] > 0


def test_resume_drops_lines_after_the_checkpoint_step(tmp_path):
    import torch

    with MetricsLogger(tmp_path, enabled_wandb=False) as m:
        for step in range(1, 8):
            m.log(step, loss=torch.tensor(0.0))  # tensors are stored as numbers
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 8, "lo')  # the run was killed in the middle of a write
    # checkpoint was at step 5; steps 6.. are trained again
    with MetricsLogger(tmp_path, enabled_wandb=False, resume_step=5) as m:
        for step in range(6, 10):
            m.log(step, loss=1.0)
    assert steps(tmp_path) == list(range(1, 10))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows] == [0.0] * 5 + [1.0] * 4


def test_fresh_start_does_not_inherit_an_earlier_attempts_lines(tmp_path):
    with MetricsLogger(tmp_path, enabled_wandb=False) as m:
        m.log(1, loss=0.0)
    with MetricsLogger(tmp_path, enabled_wandb=False) as m:  # no checkpoint existed: start over
        m.log(1, loss=2.0)
    assert steps(tmp_path) == [1]
    assert truncate_after(tmp_path / "metrics.jsonl", 0) == 1 and steps(tmp_path) == []


def test_non_main_ranks_write_nothing(tmp_path):
    m = MetricsLogger(tmp_path, config={"a": 1}, is_main=False)
    m.log(1, loss=0.5)
    m.close()
    assert list(tmp_path.iterdir()) == []
    assert progress(10, is_main=False).disable
    with progress(10, initial=3, is_main=True) as bar:
        assert not bar.disable and bar.n == 3


def test_redact_drops_credential_like_keys_at_any_depth():
    cfg = {"lr": 1, "wandb": {"API_KEY": "x", "project": "p"}, "auth": [{"hf_token": "y", "n": 2}],
           "db_password": "z", "client_secret": "w"}
    assert redact(cfg) == {"lr": 1, "wandb": {"project": "p"}, "auth": [{"n": 2}]}


def test_wandb_offline_files_under_run_dir_and_no_secret_anywhere(tmp_path, monkeypatch):
    secrets = ["wbkey0123456789abcdef0123456789abcdef0123", "hf_TOKENVALUE_7f3a", "pw-Sup3rS3cret", "envsecret-9d1c"]
    monkeypatch.delenv("WANDB_MODE", raising=False)  # default must be offline
    monkeypatch.setenv("WANDB_API_KEY", secrets[0])
    monkeypatch.setenv("LONGVID_TEST_PASSWORD", secrets[3])
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = {"lr": 1e-3, "marker": "visible-config-value-42",
              "wandb": {"api_key": secrets[0]}, "hub": {"hf_token": secrets[1]}, "db_password": secrets[2]}
    run_dir = tmp_path / "run"
    with MetricsLogger(run_dir, config=config, project="longvid-test", name="t") as m:
        assert m.wandb_run.settings.mode == "offline"
        assert dict(m.wandb_run.config) == {"lr": 1e-3, "marker": "visible-config-value-42", "wandb": {}, "hub": {}}
        for step in range(1, 4):
            m.log(step, loss=0.5)
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("run-*.wandb"))
    blobs = [p.read_bytes() for p in run_dir.rglob("*") if p.is_file()]
    assert any(b"visible-config-value-42" in b for b in blobs)  # the scan does see what wandb stored
    for secret in secrets:
        assert not any(secret.encode() in b for b in blobs), secret

    # a resumed job continues the same wandb run id
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    with MetricsLogger(run_dir, config=config, resume_step=2) as m:
        assert m.wandb_run.id == run_id
        m.log(3, loss=0.25)
    assert steps(run_dir) == [1, 2, 3]
    with MetricsLogger(run_dir, config=config) as m:  # a fresh start is a new wandb run
        assert m.wandb_run.id != run_id


def test_a_dead_wandb_service_is_a_warning_and_metrics_jsonl_goes_on(tmp_path, monkeypatch, caplog):
    """Slurm's SIGTERM reaches wandb's service process too: its calls then raise (ConnectionResetError
    in wandb.finish); the trainer's exit status must not change and metrics.jsonl keeps every row."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    m = MetricsLogger(tmp_path, {"lr": 1e-3})
    assert m.wandb_run is not None

    class Gone:
        def __getattr__(self, name):
            def fail(*a, **k):
                raise ConnectionResetError("Connection lost")
            return fail

    real, m.wandb_run = m.wandb_run, Gone()
    m.log(1, loss=0.5)  # warns, drops wandb
    m.log(2, loss=0.4)
    m.close()
    real.finish()
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert "wandb log failed (ConnectionResetError: Connection lost)" in caplog.text
    m2 = MetricsLogger(tmp_path / "b", {})
    real2, m2.wandb_run = m2.wandb_run, Gone()
    m2.close()  # finish raising at shutdown: a warning
    real2.finish()
    assert "wandb finish failed" in caplog.text
