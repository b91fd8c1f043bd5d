"""The openai caption backend against the fake VLM server (real HTTP on 127.0.0.1), faults injected.

Every clip ends captioned or marked failed with its reason; nothing is lost or duplicated; a job
killed mid-shard resumes with only the rest; the API key never reaches a file or a log line.
"""

import asyncio
import collections
import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
from clipkit import RUNNER, render_clips, stage_cfg, write_table
from vlm_server import VLMServer, dead_url

from longvid.caption.client import Pool
from longvid.caption.errors import NoEndpoint
from longvid.caption.stage import caption_shard
from longvid.io import read_jsonl

KEPT_KEYS = {"caps", "text", "caption_source", "caption_status", "caption_error", "caption_model", "caption_prompt",
             "caption_frames", "caption_attempts", "caption_tokens"}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """16 clips of 2 s (4 frames sent) and 4 of 5 s (10 frames: over a server's 8-frame budget)."""
    d = tmp_path_factory.mktemp("clips")
    short = render_clips(d / "short", 16)
    long = [{**r, "id": f"long{k}"} for k, r in enumerate(render_clips(d / "long", 4, frames=40))]
    return short + long


def run(tmp_path, rows, **caption):
    table = write_table(tmp_path / "filtered.jsonl", rows)
    out, cache = tmp_path / "captioned.jsonl", tmp_path / "cache" / "s00000.jsonl"
    assert caption_shard(stage_cfg(**caption), table, out, "t", cache=cache) == 0
    return list(read_jsonl(out)), cache


def kept(table):
    return [r for r in table if r.get("keep")]


def check_complete(table, rows, cache):
    """Every input row once, in order; rejected rows unchanged; one cache line per kept clip."""
    assert [r["id"] for r in table] == [r["id"] for r in rows] + ["rej0"]
    assert table[-1] == {"id": "rej0", "path": "/nonexistent.mp4", "keep": False, "reject": ["short"], "error": ""}
    for r in kept(table):
        assert KEPT_KEYS <= set(r) and r["caption_source"] == "openai"
        assert r["caption_status"] in ("ok", "truncated", "blocked", "error")
        assert (r["caption_status"] in ("error", "blocked")) == (r["text"] == "") == bool(r["caption_error"])
        assert "\n" not in r["caption_error"]
    lines = [json.loads(line) for line in cache.read_text().splitlines()]
    assert sorted(rec["id"] for rec in lines) == sorted(r["id"] for r in rows)


def test_clean_run_structured(tmp_path, clips):
    rows = clips[:6]
    with VLMServer(delay=0.02) as s:
        table, cache = run(tmp_path, rows, endpoints=[s.url], concurrency=2, structured=True)
    check_complete(table, rows, cache)
    for r, src in zip(kept(table), rows):
        assert r["caption_status"] == "ok" and r["text"] == src["truth"] and r["caps"][1] == src["truth"]
        assert r["caps"][0].startswith(src["truth"] + ", from")  # the dense one
        assert r["caption_model"] == "fake-vlm" and r["caption_prompt"] == "detailed+json"
        assert r["caption_frames"]["count"] == 4 and r["caption_attempts"] == 1
        assert r["caption_tokens"]["prompt"] > 0 and r["caption_tokens"]["t5_est"] > 0
    assert all(e["mode"] == "video_frames" and e["meta"]["frames_indices"] == [2, 6, 10, 14] for e in s.log)


@pytest.mark.parametrize("mode", ["image_list", "video_file"])
def test_other_modes(tmp_path, clips, mode):
    with VLMServer() as s:
        table, _ = run(tmp_path, clips[:2], endpoints=[s.url], mode=mode, structured=True)
    assert [r["text"] for r in kept(table)] == [c["truth"] for c in clips[:2]]
    assert {e["mode"] for e in s.log} == {mode}


def test_faults_everywhere_nothing_lost(tmp_path, clips):
    """30 % 500s, 429s with Retry-After, hangs, malformed JSON, dropped connections, cut answers,
    boilerplate, repetition loops, a deterministic 400 for 10-frame clips, one endpoint of three dead."""
    faults = dict(fail_rate=0.3, retry_after=0.05, retry_after_seconds=0.2, hang_rate=0.05, malformed_rate=0.05,
                  drop_rate=0.05, length_rate=0.1, boilerplate_rate=0.3, repeat_rate=0.2, delay=0.02,
                  max_visual_frames=8)
    with VLMServer(seed=1, hang_first=1, **faults) as a, VLMServer(seed=2, **faults) as b:
        t0 = time.monotonic()
        table, cache = run(tmp_path, clips, endpoints=[a.url, dead_url(), b.url], concurrency=3, timeout=1.0,
                           attempts=8, backoff=0.05, structured=True)
        took = time.monotonic() - t0
    check_complete(table, clips, cache)
    stats = a.stats + b.stats
    for outcome in ("error_500", "error_400_encoder_cache", "hang", "boilerplate", "repeat"):
        assert stats[outcome] > 0, (outcome, stats)  # the faults did happen
    status = collections.Counter(r["caption_status"] for r in kept(table))
    assert status["ok"] + status["truncated"] == len(clips), (status, [r["caption_error"] for r in kept(table)])
    for r, src in zip(kept(table), clips):
        if r["caption_status"] == "ok":
            assert r["text"] == src["truth"]
            assert not r["caps"][0].startswith("The video")  # boilerplate cleaned off
        if r["id"].startswith("long"):  # 10 frames refused: retried once with 4 and fewer pixels
            assert r["caption_frames"]["count"] == 4 and r["caption_frames"]["shrunk"] == 1
    # a looping answer was retried with sampling and a new seed
    retried = [e for e in a.log + b.log if e.get("temperature") == 0.7]
    assert retried and all(e["seed"] != 0 for e in retried)
    assert took < 30


def test_deterministic_errors_not_retried_unchanged(tmp_path, clips):
    rows = clips[-2:]  # 10 frames each
    with VLMServer(max_visual_frames=2) as s:  # even the shrunk request is too big
        table, _ = run(tmp_path / "a", rows, endpoints=[s.url], backoff=0.01)
    for r in kept(table):
        assert r["caption_status"] == "error" and "encoder cache" in r["caption_error"]
        assert r["caption_attempts"] == 2 and "half the frames" in r["caption_error"]
    assert [e["frames"] for e in s.log] == [10, 10, 4, 4] or sorted(e["frames"] for e in s.log) == [4, 4, 10, 10]
    with VLMServer(max_visual_frames=2) as s:
        table, _ = run(tmp_path / "b", rows, endpoints=[s.url], shrink_on_400=False)
    assert [r["caption_attempts"] for r in kept(table)] == [1, 1] and len(s.log) == 2
    with QwenTimestamp500() as url:  # a known deterministic 500: not retried
        table, _ = run(tmp_path / "c", rows, endpoints=[url], model="qwen3-vl")
    assert [r["caption_attempts"] for r in kept(table)] == [1, 1]
    assert all(r["caption_status"] == "error" and "timestamps length" in r["caption_error"] for r in kept(table))


def test_unknown_500_retried_then_the_job_fails(tmp_path, clips):
    """A 500 the client cannot tell from a transient one is retried `attempts` times; when every
    clip ends so, the job fails (and a rerun tries them again: transient errors are not reused)."""
    with VLMServer(deterministic_500_substring="NEVER-WORKS") as s, pytest.raises(RuntimeError, match="none of 2"):
        run(tmp_path, clips[:2], endpoints=[s.url], prompt="NEVER-WORKS: describe it", attempts=3, backoff=0.01)
    recs = [json.loads(line) for line in (tmp_path / "cache/s00000.jsonl").read_text().splitlines()]
    assert [r["attempts"] for r in recs] == [3, 3] and all(r["transient"] for r in recs)
    assert all("gave up after 3 attempts" in r["error"] for r in recs)


class QwenTimestamp500:
    """A tiny server answering every chat request with Qwen3-VL's deterministic 500 (vllm #35909)."""

    def __enter__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                body = json.dumps({"error": {"message": "timestamps length (30) should be equal video length (8)",
                                             "code": 500}}).encode()
                self.send_response(500)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_bad_captions_kept_when_configured(tmp_path, clips):
    with VLMServer(repeat_rate=1.0, max_concurrency=1) as s:
        table, _ = run(tmp_path, clips[:2], endpoints=[s.url], on_bad_caption="keep", max_tokens=40)
    for r in kept(table):  # the loop cut off, the first sentence kept, marked
        assert r["caption_status"] == "truncated" and r["caption_attempts"] == 1 and r["caption_error"] == ""
        assert r["caption_note"] == "repetition loop cut off" and r["text"].startswith("a ")
    with VLMServer(empty_rate=1.0) as s:
        table, _ = run(tmp_path / "e", clips[:1], endpoints=[s.url])
    assert kept(table)[0]["caption_status"] == "error" and kept(table)[0]["caption_attempts"] == 3
    assert "empty answer" in kept(table)[0]["caption_error"]


def test_routing_bounds_and_readmission(tmp_path, clips, caplog):
    caplog.set_level(logging.INFO)
    with VLMServer(delay=0.3) as a, VLMServer(delay=0.3, warmup=1.0) as b:  # b: 503 until warmed up
        table, cache = run(tmp_path, clips[:16], endpoints=[a.url, b.url], concurrency=2, backoff=0.05, attempts=10)
        assert a.snapshot()["max_running"] <= 2 and b.snapshot()["max_running"] <= 2
    check_complete(table, clips[:16], cache)
    assert all(r["caption_status"] == "ok" for r in kept(table))
    assert "is out after 3 failures" in caplog.text and "is back" in caplog.text
    assert a.stats["ok"] > 0 and b.stats["ok"] > 0  # b took work once back


def test_api_key_sent_never_written(tmp_path, clips, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    secret = "sk-test-DO-NOT-LEAK-1234"
    monkeypatch.setenv("CAPTION_TEST_KEY", secret)
    with VLMServer(api_key=secret) as s:
        table, cache = run(tmp_path / "ok", clips[:2], endpoints=[s.url], api_key_env="CAPTION_TEST_KEY")
    assert all(r["caption_status"] == "ok" for r in kept(table)) and all(e["auth"] for e in s.log)
    monkeypatch.setenv("CAPTION_TEST_KEY", "sk-wrong-" + secret)
    with VLMServer(api_key=secret) as s, pytest.raises(RuntimeError, match="none of 2 clips"):
        run(tmp_path / "bad", clips[:2], endpoints=[s.url], api_key_env="CAPTION_TEST_KEY", model="fake-vlm")
    bad = [json.loads(line) for line in (tmp_path / "bad/cache/s00000.jsonl").read_text().splitlines()]
    assert {r["error"] for r in bad} == {"HTTP 401: Unauthorized"} and all(r["attempts"] == 1 for r in bad)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files and not any(secret in p.read_text(errors="replace") for p in files)
    assert secret not in caplog.text


def test_every_endpoint_dead_fails_fast(tmp_path, clips):
    async def go():
        async with Pool([dead_url(), dead_url()], 2, None, "m", down_timeout=1.0, probe_every=0.1) as pool:
            from longvid.caption.captioner import caption_clip
            from longvid.caption.frames import prepare

            cfg = stage_cfg(backoff=0.01, attempts=50)["caption"]
            await asyncio.gather(*(caption_clip(pool, cfg, r, prepare(r, cfg), None) for r in clips[:3]))

    t0 = time.monotonic()
    with pytest.raises(NoEndpoint, match="every endpoint has been down"):
        asyncio.run(go())
    assert time.monotonic() - t0 < 10


def test_sigkill_mid_shard_then_rerun(tmp_path, clips):
    rows = clips[:12]
    table = write_table(tmp_path / "filtered.jsonl", rows)
    out, cache = tmp_path / "captioned.jsonl", tmp_path / "cache" / "s00000.jsonl"
    with VLMServer(delay=0.25, max_concurrency=1) as s:
        cfgfile = tmp_path / "cfg.json"
        cfgfile.write_text(json.dumps(stage_cfg(endpoints=[s.url], concurrency=1, structured=True)))
        cmd = [sys.executable, "-c", RUNNER, str(cfgfile), str(table), str(out), str(cache)]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not cache.exists() or len(cache.read_text().splitlines()) < 4):
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(0.3)  # the server notices the cut connection of the request in flight
        assert not out.exists(), "the declared output is written last"
        done = {json.loads(line)["id"] for line in cache.read_text().splitlines() if line.endswith("}")}
        assert 4 <= len(done) < 12
        before = len(s.log)
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)
        rerun = s.log[before:]
    assert len(rerun) == 12 - len(done) and all(e["outcome"] == "ok" for e in rerun)
    final = list(read_jsonl(out))
    check_complete(final, rows, cache)
    assert [r["text"] for r in kept(final)] == [r["truth"] for r in rows]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    assert list(read_jsonl(out)) == final  # a third run, the server gone: all cached, nothing asked


def test_retry_after_is_honoured(tmp_path, clips):
    """With no backoff of its own (backoff 0), a clip answered 429 still waits the server's Retry-After."""
    with VLMServer(retry_after=0.5, retry_after_seconds=0.6, seed=3) as s:
        t0 = time.monotonic()
        table, _ = run(tmp_path, clips[:6], endpoints=[s.url], concurrency=6, backoff=0.0, attempts=10)
        took = time.monotonic() - t0
    assert s.stats["error_429"] > 0 and all(r["caption_status"] == "ok" for r in kept(table))
    assert took >= 0.6


def test_stage_entry_dispatches(tmp_path, clips):
    from longvid.io import InputError

    rows = [{**clips[0], "captions": [{"text": "a source caption"}]}]
    table = write_table(tmp_path / "filtered.jsonl", rows)
    cfg = stage_cfg()
    cfg["caption"]["backend"] = "passthrough"
    assert caption_shard(cfg, table, tmp_path / "p.jsonl", "t") == 0
    assert kept(list(read_jsonl(tmp_path / "p.jsonl")))[0]["text"] == "a source caption"
    with pytest.raises(InputError, match="caption.endpoints"):
        caption_shard(stage_cfg(), table, tmp_path / "o.jsonl", "t", cache=tmp_path / "c.jsonl")
