"""caption.server: the job starts the (fake) VLM server itself, waits for /health, stops it — always.

The server runs from a command template as a subprocess (tests/caption/vlm_server.py) through
`sh -c 'echo $$ > pidfile; exec python vlm_server.py ...'`, so each test can check that the very
process it started is gone afterwards.
"""

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
from clipkit import RUNNER, VLM_SERVER, render_clips, stage_cfg, write_table

from longvid.caption import openai_backend
from longvid.caption.server import ServerDied, ServerError, server_command
from longvid.caption.stage import caption_shard
from longvid.io import read_jsonl


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return render_clips(tmp_path_factory.mktemp("clips"), 8)


def template(tmp_path, *flags: str, script: str | None = None) -> str:
    """A command template: the fake server with `flags` (or shell `script`), its pid into tmp_path/pid."""
    run = script or "exec " + " ".join([shlex.quote(sys.executable), shlex.quote(str(VLM_SERVER)), "--port {port}",
                                        "--model {model}", *flags])
    return f"sh -c {shlex.quote(f'echo $$ > {tmp_path}/pid; {run}')}"


def alive(tmp_path, wait: float = 0.0) -> bool:
    """Whether the server process still runs (a zombie nobody reaped counts as gone), waiting up to `wait` s."""
    pid = int((tmp_path / "pid").read_text())
    deadline = time.monotonic() + wait
    while True:
        try:
            state = next(line for line in open(f"/proc/{pid}/status") if line.startswith("State:"))
            running = "zombie" not in state
        except (FileNotFoundError, ProcessLookupError):
            running = False
        if not running or time.monotonic() >= deadline:
            return running
        time.sleep(0.05)


def cfg(command: str, **server):
    return stage_cfg(server={"command": command, "model": "fake-vlm", **server}, concurrency=2, backoff=0.05)


def caption(tmp_path, rows, c):
    table = write_table(tmp_path / "filtered.jsonl", rows)
    out = tmp_path / "captioned.jsonl"
    caption_shard(c, table, out, "t", cache=tmp_path / "cache" / "s00000.jsonl")
    return list(read_jsonl(out))


def test_command_template():
    assert server_command("vllm serve {model} --port {port} --host 127.0.0.1", "/m/Qwen 7B", 8123) == \
        ["vllm", "serve", "/m/Qwen 7B", "--port", "8123", "--host", "127.0.0.1"]
    with pytest.raises(ValueError, match="server.model"):
        server_command("vllm serve {model}", None, 1)


def test_started_waited_for_and_stopped(tmp_path, clips):
    stats = tmp_path / "stats.json"
    c = cfg(template(tmp_path, "--warmup 1.0", f"--stats-file {stats}"), startup_timeout=30)
    table = caption(tmp_path, clips[:4], c)
    assert [r["text"] for r in table if r.get("keep")] and all(
        r["caption_status"] == "ok" for r in table if r.get("keep"))
    assert not alive(tmp_path), "the server must be stopped when the shard is done"
    got = json.loads(stats.read_text())["stats"]  # written by the server on its SIGTERM exit
    assert got["GET /health"] >= 2 and got.get("error_503", 0) == 0  # waited through warmup, asked nothing early
    log = (tmp_path / "cache" / "s00000.server.log").read_text()
    assert "starting:" in log and "listening on http://127.0.0.1:" in log


@pytest.mark.parametrize("script,code,line", [
    (None, 0, "--dead, exiting without listening"),  # vLLM may exit 0 when its engine dies
    ("echo 'CUDA out of memory (fake)'; exit 3", 3, "CUDA out of memory (fake)"),
])
def test_early_exit_fails_with_code_and_log(tmp_path, clips, script, code, line):
    c = cfg(template(tmp_path, "--dead", script=script), startup_timeout=30)
    t0 = time.monotonic()
    with pytest.raises(ServerError, match=f"exited with code {code} before it was ready") as e:
        caption(tmp_path, clips[:2], c)
    assert line in str(e.value) and time.monotonic() - t0 < 10
    assert not (tmp_path / "captioned.jsonl").exists()


def test_not_ready_by_the_deadline(tmp_path, clips):
    c = cfg(template(tmp_path, "--start-delay 60"), startup_timeout=1.0)
    t0 = time.monotonic()
    with pytest.raises(ServerError, match="not ready .* within 1 s"):
        caption(tmp_path, clips[:2], c)
    assert time.monotonic() - t0 < 10 and not alive(tmp_path)


def test_death_mid_shard_fails_the_job_then_rerun_finishes(tmp_path, clips):
    c = cfg(template(tmp_path, "--exit-after 3", "--delay 0.1"), startup_timeout=30)
    t0 = time.monotonic()
    with pytest.raises(ServerDied, match="exited with code 0 while captioning") as e:
        caption(tmp_path, clips, c)
    assert "listening on" in str(e.value) and time.monotonic() - t0 < 20
    assert not (tmp_path / "captioned.jsonl").exists() and not alive(tmp_path)
    cached = [json.loads(line) for line in (tmp_path / "cache/s00000.jsonl").read_text().splitlines()]
    done = {r["id"] for r in cached if r["status"] == "ok"}
    assert 1 <= len(done) <= 3
    stats = tmp_path / "stats.json"
    table = caption(tmp_path, clips, cfg(template(tmp_path, f"--stats-file {stats}"), startup_timeout=30))
    kept = [r for r in table if r.get("keep")]
    assert [r["id"] for r in kept] == [r["id"] for r in clips] and all(r["caption_status"] == "ok" for r in kept)
    assert json.loads(stats.read_text())["stats"]["chat"] == len(clips) - len(done)  # only the rest


def test_failure_while_captioning_still_stops_it(tmp_path, clips, monkeypatch):
    async def broken(*args, **kwargs):
        raise RuntimeError("captioning broke")

    monkeypatch.setattr(openai_backend, "caption_all", broken)
    with pytest.raises(RuntimeError, match="captioning broke"):
        caption(tmp_path, clips[:2], cfg(template(tmp_path), startup_timeout=30))
    assert not alive(tmp_path)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_signalled_job_leaves_no_server(tmp_path, clips, sig):
    """SIGTERM (Slurm preemption, scancel): the job stops its server and fails. SIGKILL: the kernel
    tells the server (PR_SET_PDEATHSIG), so no orphan keeps the GPU."""
    c = cfg(template(tmp_path, "--delay 0.3", "--max-concurrency 1"), startup_timeout=30)
    (tmp_path / "cfg.json").write_text(json.dumps(c))
    table = write_table(tmp_path / "filtered.jsonl", clips)
    cache = tmp_path / "cache" / "s00000.jsonl"
    err = ""
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, str(tmp_path / "cfg.json"), str(table),
                             str(tmp_path / "out.jsonl"), str(cache)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not cache.exists() or not cache.read_text()):
            time.sleep(0.02)
        assert cache.exists() and cache.read_text(), "nothing was captioned"
        proc.send_signal(sig)
        err = proc.communicate(timeout=120)[1] or ""
    finally:
        if proc.poll() is None:
            proc.kill()
        gone = not alive(tmp_path, wait=20)
        if not gone:  # do not leave the orphan behind when the check fails
            os.kill(int((tmp_path / "pid").read_text()), signal.SIGKILL)
    log = (tmp_path / "cache" / "s00000.server.log").read_text()[-2000:]
    assert gone, f"the server outlived the job:\n{err[-2000:]}\nserver log:\n{log}"
    assert proc.returncode != 0 and not (tmp_path / "out.jsonl").exists()
