"""Keeping the endpoint's slots busy under faults (bench/caption.py measures the throughput itself).

* A server that answers (even only 500s) is up: with one endpoint it is never taken out; a 503
  (warming up) or a refused connection still counts against it.
* A clip backing off holds no request slot: other clips' requests are served meanwhile, and the
  pool's per-endpoint limit still holds with more clip workers than slots.
* A retry takes the next free slot before first tries; cancelled waiters end.
"""

import asyncio
import logging
import random

import pytest
from clipkit import render_clips, stage_cfg, write_table
from vlm_server import VLMServer

from longvid.caption.client import Pool
from longvid.caption.errors import RequestError, classify
from longvid.caption.frames import prepare
from longvid.caption.payload import build_body
from longvid.caption.stage import caption_shard
from longvid.io import read_jsonl


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return render_clips(tmp_path_factory.mktemp("clips"), 12)


def run(tmp_path, rows, **caption):
    table = write_table(tmp_path / "filtered.jsonl", rows)
    out = tmp_path / "captioned.jsonl"
    assert caption_shard(stage_cfg(**caption), table, out, "t", cache=tmp_path / "cache.jsonl") == 0
    return [r for r in read_jsonl(out) if r.get("keep")]


def test_only_unavailability_counts_against_an_endpoint():
    assert not classify(500, "Internal server error").endpoint_fault
    assert not classify(502, "Bad gateway").endpoint_fault and classify(502, "").retry
    assert classify(503, "The server is warming up").endpoint_fault and classify(503, "").retry


def test_one_endpoint_answering_500s_is_never_taken_out(tmp_path, clips, caplog):
    caplog.set_level(logging.INFO)
    with VLMServer(fail_rate=0.3, seed=4, delay=0.02, max_concurrency=2) as s:
        table = run(tmp_path, clips, endpoints=[s.url], concurrency=2, backoff=0.01, attempts=10)
    assert s.stats["error_500"] >= 3, s.stats  # enough 500s that three in a row took it out before
    assert all(r["caption_status"] == "ok" for r in table)
    assert "is out after" not in caplog.text and s.stats["GET /health"] == 0


def test_every_answer_a_500_still_up(clips):
    cfg = stage_cfg()["caption"]
    frames = prepare(clips[0], cfg)

    async def go(url):
        async with Pool([url], 2, None, "fake-vlm", fail_limit=3) as pool:
            for _ in range(8):
                with pytest.raises(RequestError, match="HTTP 500"):
                    await pool.complete(lambda m: build_body(cfg, m, frames, 0.0, 0), 5)
            return pool.endpoints[0]

    with VLMServer(fail_rate=1.0) as s:
        ep = asyncio.run(go(s.url))
    assert ep.up and ep.failures == 0 and ep.probe is None and s.stats["GET /health"] == 0


class OneSlowClip(VLMServer):
    """Only the first clip asked is answered 429 (Retry-After), once."""

    victim = None

    def draw(self, fault, *key):
        if fault != "429":
            return super().draw(fault, *key)
        with self.lock:
            self.victim = self.victim or key[0]
        return 0.0 if key == (self.victim, 0) else 1.0


def test_a_clip_backing_off_holds_no_slot(tmp_path, clips):
    """One slot; the first clip waits 1.2 s (Retry-After): meanwhile the other clips are served."""
    with OneSlowClip(retry_after=1.0, retry_after_seconds=1.2, delay=0.05, max_concurrency=1) as s:
        table = run(tmp_path, clips[:8], endpoints=[s.url], concurrency=1)
        log = list(s.log)
    assert all(r["caption_status"] == "ok" for r in table) and s.snapshot()["max_running"] == 1
    (refused,) = [e for e in log if e["outcome"] == "error_429"]
    retry = next(e for e in log if e.get("key") == refused["key"] and e["attempt"] == 1)
    assert retry["t0"] - refused["t0"] >= 1.15
    served = [e for e in log if e["outcome"] == "ok" and refused["t0"] < e["t0"] and e["t1"] < retry["t0"]]
    assert len(served) >= 5, [(e["t0"] - refused["t0"], e["outcome"]) for e in log]


def test_a_retry_goes_before_first_tries():
    async def go():
        async with Pool(["http://127.0.0.1:9/v1"], 1, None, "m") as pool:
            held = await pool.acquire()
            order = []

            async def want(name, urgent):
                ep = await pool.acquire(urgent)
                order.append(name)
                await pool.release(ep, None)

            tasks = [asyncio.create_task(want("first try", False))]
            await asyncio.sleep(0.01)
            tasks.append(asyncio.create_task(want("retry", True)))
            await asyncio.sleep(0.01)
            await pool.release(held, None)
            await asyncio.wait_for(asyncio.gather(*tasks), 5)
            return order

    assert asyncio.run(go()) == ["retry", "first try"]


def test_cancelled_waiters_end():
    """Many clips waiting for slots, all cancelled (a signal, NoEndpoint): every one ends (none keeps
    waiting because a cancel got lost, which hung the job), and no slot stays taken."""
    async def go():
        rng = random.Random(0)
        async with Pool(["http://127.0.0.1:9/v1"], 2, None, "m") as pool:
            async def clip():
                while True:
                    ep = await pool.acquire(rng.random() < 0.3)
                    try:
                        await asyncio.sleep(rng.random() * 0.002)
                    finally:
                        await asyncio.shield(pool.release(ep, None))

            for _ in range(40):
                tasks = [asyncio.create_task(clip()) for _ in range(12)]
                await asyncio.sleep(rng.random() * 0.02)
                for t in tasks:
                    t.cancel()
                _, pending = await asyncio.wait(tasks, timeout=5)
                assert not pending and pool.endpoints[0].outstanding == 0

    asyncio.run(go())
