"""The `openai` caption backend: the kept clips of a shard captioned by a VLM behind chat-completions.

`caption_shard(cfg, clips, out, name, cache=None)` runs longvid.caption.shard (cache, resume, the
output table) with this captioning:

1. Frames are decoded AHEAD of the requests: a few threads decode and JPEG-encode clips
   (longvid.caption.frames) into a bounded asyncio queue that the clip workers drain, so endpoints
   never wait for decoding and memory stays bounded. There are `WORKERS_PER_SLOT` times as many clip
   workers as request slots (concurrency per endpoint x endpoints): the pool's per-endpoint limit is
   the real one, and a clip sleeping through its retry backoff holds no slot, another clip's request
   takes it (with 30 % transient 500s about as many clips back off at once as are in flight).
2. Each finished clip (longvid.caption.captioner: retries, quality gates, a status) is appended to
   the cache and fsynced as it arrives: a killed job, a preempted node or a rerun captions only
   what is missing, no duplicates, no loss.
3. With `caption.server` the job starts the server itself (longvid.caption.server), waits for its
   health route, watches it (a server exiting mid-shard, with any exit code, fails the job with its
   last log lines) and stops it at the end, on failure too. Its log is `<cache>.server.log`.
4. With `caption.rewrite` each caption goes through a second, text-only request (longvid.caption.rewrite).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from longvid.caption import cache as ccache
from longvid.caption import rewrite
from longvid.caption import server as cserver
from longvid.caption.captioner import caption_clip, record
from longvid.caption.client import Pool
from longvid.caption.frames import prepare
from longvid.caption.shard import run_shard
from longvid.io import InputError, one_line

log = logging.getLogger(__name__)

DECODE_THREADS = max(1, min(4, (os.cpu_count() or 1)))
WORKERS_PER_SLOT = 3  # clip workers per request slot: in flight, backing off, waiting with their frames
def server_model(ccfg: dict) -> str | None:
    scfg = ccfg.get("server") or {}
    return scfg.get("model") or (ccfg["model"] if ccfg["model"] != "auto" else None)


class Progress:
    def __init__(self, name: str, total: int):
        self.name, self.total, self.counts = name, total, collections.Counter()
        self.t0 = self.last = time.monotonic()

    def add(self, rec: dict) -> None:
        self.counts[rec["status"]] += 1
        now = time.monotonic()
        done = sum(self.counts.values())
        if now - self.last >= 30 or done == self.total:
            self.last = now
            log.info("%s: %d/%d clips captioned (%s), %.2f clips/s", self.name, done, self.total,
                     ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items())), done / max(now - self.t0, 1e-9))


async def caption_all(ccfg: dict, todo: list[dict], cc: ccache.CaptionCache, fps: dict[str, str],
                      endpoints: list[str], health: str = "/health", server: cserver.Server | None = None,
                      name: str = "caption", down_timeout: float = 300.0, decode_threads: int = DECODE_THREADS
                      ) -> list[dict]:
    """Caption `todo` through `endpoints`, each record into `cc` as it arrives; the records."""
    loop = asyncio.get_running_loop()
    slots = ccfg["concurrency"] * len(endpoints)
    workers = WORKERS_PER_SLOT * slots  # clips backing off wait outside the pool's slots (module doc)
    queue: asyncio.Queue = asyncio.Queue(maxsize=max(2, slots))
    rows = iter(todo)
    results: list[dict] = []
    progress = Progress(name, len(todo))
    with ThreadPoolExecutor(decode_threads, thread_name_prefix="caption-decode") as executor:
        async def decode(row: dict, shrink: int = 0):
            return await loop.run_in_executor(executor, prepare, row, ccfg, shrink)

        async def produce():
            for row in rows:  # shared iterator: each producer takes the next clip
                try:
                    item = (row, await decode(row), None)
                except Exception as e:  # noqa: BLE001 - an undecodable clip is that clip's error
                    item = (row, None, one_line(e))
                await queue.put(item)

        async def consume(pool: Pool):
            while (item := await queue.get()) is not None:
                row, frames, err = item
                if err is not None:
                    rec = record(row, ccfg, "error", f"decode failed: {err}", None, 0)
                else:
                    rec = await caption_clip(pool, ccfg, row, frames, lambda s, row=row: decode(row, s))
                    if rewrite.wanted(ccfg, rec):
                        rec = await rewrite.rewrite(pool, ccfg, rec)
                cc.put(rec, fps[row["id"]])
                results.append(rec)
                progress.add(rec)

        async def work(pool: Pool):
            consumers = [asyncio.create_task(consume(pool)) for _ in range(workers)]
            producers = [asyncio.create_task(produce()) for _ in range(decode_threads)]

            async def end():  # once every clip is queued: one stop mark per consumer
                await asyncio.gather(*producers)
                for _ in consumers:
                    await queue.put(None)

            tasks = [*consumers, *producers, asyncio.create_task(end())]
            try:  # the first failure (NoEndpoint, a bug) ends all: nobody blocks on a full queue
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                for t in done:
                    t.result()
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

        async def watch():
            while True:
                server.check()  # raises ServerDied
                await asyncio.sleep(0.25)

        async with Pool(endpoints, ccfg["concurrency"], ccfg["api_key_env"], ccfg["model"], health,
                        down_timeout=down_timeout) as pool:
            tasks = [asyncio.create_task(work(pool))] + ([asyncio.create_task(watch())] if server else [])
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    t.result()  # a server death or NoEndpoint raises here
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    return results


def caption_shard(cfg: dict, clips: Path, out: Path, name: str, cache: Path | None = None,
                  down_timeout: float = 300.0, server_grace: float = 15.0) -> int:
    """The caption stage with caption.backend openai (see the module doc). `cache`: the per-shard
    cache file (the stage table passes data/caption_cache/{dataset}/{shard}.jsonl; None: a hidden
    file beside `out`)."""
    ccfg = cfg["caption"]

    def caption_todo(todo, cc, fps, cache_path):
        if not ccfg.get("server") and not ccfg["endpoints"]:
            raise InputError("caption: backend openai needs caption.endpoints (base URLs) or caption.server")
        run_backend(ccfg, todo, cc, fps, cache_path, name, down_timeout, server_grace)

    return run_shard(cfg, clips, out, name, cache, "openai", caption_todo)


def run_backend(ccfg: dict, todo: list[dict], cc: ccache.CaptionCache, fps: dict[str, str], cache_path: Path,
                name: str, down_timeout: float, server_grace: float) -> None:
    scfg = ccfg.get("server")
    if not scfg:
        asyncio.run(caption_all(ccfg, todo, cc, fps, ccfg["endpoints"], name=name, down_timeout=down_timeout))
        return
    log_path = cache_path.with_name(cache_path.stem + ".server.log")
    with cserver.running_server(scfg, server_model(ccfg), log_path, grace=server_grace) as srv:
        log.info("%s: caption server ready at %s (log %s)", name, srv.url, log_path)
        asyncio.run(caption_all(ccfg, todo, cc, fps, [srv.url], scfg.get("health") or "/health", srv, name,
                                down_timeout))
