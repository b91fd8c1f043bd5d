"""An asynchronous client for OpenAI-compatible chat-completions endpoints (aiohttp), one request at a time.

* `Pool`: several endpoints, each with at most `concurrency` requests in flight; a request goes to
  the endpoint with the fewest outstanding. More requests may wait for a slot than there are slots
  (the caller runs more clips than slots, so a clip backing off idles none); a retry (`urgent`)
  takes the next free slot before first tries, so a retried clip does not queue again. An endpoint
  failing `fail_limit` times in a row (connection error, timeout, 503) is taken out and probed in
  the background on its health route (`/health` at the server root, the base URL without /v1; a
  server without that route: GET /v1/models) until it answers 200. With every endpoint out for
  `down_timeout` seconds a request raises `NoEndpoint` (the job fails: nothing to caption with),
  never waits forever.
* Failures raise `RequestError` (longvid.caption.errors): connection errors and timeouts as retryable
  endpoint faults, malformed answers as retryable, HTTP errors as `classify` says. An answer that is no
  endpoint fault (200, 4xx, a plain 500: the server is up) ends the endpoint's run of failures.
* The API key comes from the environment variable the config names and is sent as a bearer token;
  it never appears in a message, a log line or a file (`scrub` removes it from server text too).
  Every error message is one line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field

import aiohttp

from longvid.caption.errors import NoEndpoint, RequestError, classify

log = logging.getLogger(__name__)

@dataclass
class Endpoint:
    base: str  # ".../v1"
    concurrency: int
    health: str = "/health"
    outstanding: int = 0
    failures: int = 0  # in a row
    up: bool = True
    model: str | None = None
    sent: int = 0
    probe: asyncio.Task | None = field(default=None, repr=False)

    @property
    def root(self) -> str:
        return re.sub(r"/v1/?$", "", self.base.rstrip("/"))

    @property
    def free(self) -> bool:
        return self.up and self.outstanding < self.concurrency


@dataclass
class Answer:
    content: str | None
    finish_reason: str | None
    usage: dict
    model: str
    endpoint: str
    seconds: float


class Pool:
    """The endpoints and the HTTP session; use as `async with Pool(...) as pool`."""

    def __init__(self, endpoints: list[str], concurrency: int, api_key_env: str | None, model: str = "auto",
                 health: str = "/health", fail_limit: int = 3, down_timeout: float = 300.0,
                 probe_every: float = 0.5, probe_max: float = 15.0):
        if not endpoints:
            raise ValueError("caption: no endpoints (set caption.endpoints or caption.server)")
        self.endpoints = [Endpoint(e.rstrip("/"), concurrency, health) for e in endpoints]
        self.model, self.fail_limit, self.down_timeout = model, fail_limit, down_timeout
        self.probe_every, self.probe_max = probe_every, probe_max
        key = os.environ.get(api_key_env or "") or None
        self._key = key
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._cond: asyncio.Condition | None = None
        self._session: aiohttp.ClientSession | None = None
        self._turn = 0
        self._urgent = 0  # urgent requests waiting for a slot
        self._down_since: float | None = None
        self._model_lock: asyncio.Lock | None = None

    async def __aenter__(self) -> Pool:
        self._cond, self._model_lock = asyncio.Condition(), asyncio.Lock()
        limit = sum(e.concurrency + 2 for e in self.endpoints)
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit), trust_env=False,
                                              timeout=aiohttp.ClientTimeout(total=None))
        return self

    async def __aexit__(self, *exc) -> None:
        for e in self.endpoints:
            if e.probe is not None:
                e.probe.cancel()
        await asyncio.gather(*(e.probe for e in self.endpoints if e.probe is not None), return_exceptions=True)
        await self._session.close()

    def scrub(self, text: str) -> str:
        """`text` without the API key (a server may echo a header back)."""
        return text.replace(self._key, "***") if self._key else text

    @property
    def any_up(self) -> bool:
        return any(e.up for e in self.endpoints)

    # -- routing
    async def acquire(self, urgent: bool = False) -> Endpoint:
        """The up endpoint with the fewest outstanding requests, once one has room (`urgent` first)."""
        async with self._cond:
            self._urgent += urgent
            try:
                return await self._acquire(urgent)
            finally:
                self._urgent -= urgent
                if urgent:  # first tries skipped free slots while it waited
                    self._cond.notify_all()

    async def _acquire(self, urgent: bool) -> Endpoint:
        """acquire's loop, the lock held: first tries wait while an urgent request waits."""
        while True:
            free = [e for e in self.endpoints if e.free] if urgent or not self._urgent else []
            if free:
                self._down_since = None
                self._turn += 1  # ties rotate, so equal endpoints share the load
                n = len(self.endpoints)
                ep = min(free, key=lambda e: (e.outstanding, (self.endpoints.index(e) - self._turn) % n))
                ep.outstanding += 1
                ep.sent += 1
                return ep
            if not self.any_up:
                now = time.monotonic()
                self._down_since = self._down_since or now
                if now - self._down_since > self.down_timeout:
                    raise NoEndpoint(f"every endpoint has been down for {self.down_timeout:g} s "
                                     f"({', '.join(e.base for e in self.endpoints)})")
            else:
                self._down_since = None
            try:  # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel (the task hangs)
                async with asyncio.timeout(0.5):
                    await self._cond.wait()
            except TimeoutError:
                pass

    async def release(self, ep: Endpoint, fault: bool | None) -> None:
        """Give the slot back; fault True/False updates the endpoint's failures in a row, None leaves them."""
        async with self._cond:
            ep.outstanding -= 1
            if fault is False:
                ep.failures = 0
            elif fault:
                ep.failures += 1
                if ep.up and ep.failures >= self.fail_limit:
                    ep.up = False
                    log.warning("endpoint %s is out after %d failures in a row; probing %s%s", ep.base,
                                ep.failures, ep.root, ep.health)
                    ep.probe = asyncio.create_task(self._probe(ep))
            self._cond.notify_all()

    async def _probe(self, ep: Endpoint) -> None:
        delay = self.probe_every
        while True:
            await asyncio.sleep(delay)
            if await self._healthy(ep):
                async with self._cond:
                    ep.up, ep.failures = True, 0
                    self._cond.notify_all()
                log.info("endpoint %s is back", ep.base)
                return
            delay = min(self.probe_max, delay * 2)

    async def _healthy(self, ep: Endpoint) -> bool:
        for url in (ep.root + ep.health, ep.base + "/models"):
            try:
                async with self._session.get(url, headers=self._headers,
                                             timeout=aiohttp.ClientTimeout(total=10)) as r:
                    if r.status == 200:
                        return True
                    if r.status != 404:
                        return False
            except (aiohttp.ClientError, TimeoutError, OSError):
                return False
        return False

    # -- requests
    async def model_for(self, ep: Endpoint, timeout: float) -> str:
        """The model name: the configured one, or (model auto) the first of the endpoint's GET /v1/models."""
        if self.model != "auto":
            return self.model
        async with self._model_lock:
            if ep.model is None:
                obj = await self._call("GET", ep, "/models", None, timeout)
                try:
                    ep.model = str(obj["data"][0]["id"])
                except (KeyError, IndexError, TypeError):
                    raise RequestError(f"{ep.base}/models lists no model", True, endpoint_fault=True) from None
        return ep.model

    async def _call(self, method: str, ep: Endpoint, route: str, body: dict | None, timeout: float) -> dict:
        url = ep.base + route
        try:
            async with asyncio.timeout(timeout):
                async with self._session.request(method, url, json=body, headers=self._headers) as r:
                    text = await r.text(errors="replace")
                    if r.status != 200:
                        raise classify(r.status, self.scrub(text), r.headers)
        except TimeoutError:
            raise RequestError(f"timeout: no answer from {url} within {timeout:g} s", True,
                               endpoint_fault=True) from None
        except aiohttp.ClientConnectorError as e:
            raise RequestError(f"cannot connect to {url}: {self.scrub(str(e.os_error or e))}", True,
                               endpoint_fault=True, connect=True) from None
        except (aiohttp.ClientError, OSError) as e:  # dropped connection, cut body
            raise RequestError(f"connection to {url} failed: {type(e).__name__}: {self.scrub(str(e))}", True,
                               endpoint_fault=True) from None
        try:
            obj = json.loads(text)
            if not isinstance(obj, dict):
                raise ValueError
        except ValueError:
            raise RequestError(f"malformed answer from {url} (not a JSON object): {self.scrub(text[:80])}",
                               True) from None
        return obj

    async def complete(self, make_body, timeout: float, urgent: bool = False) -> Answer:
        """One chat completion: `make_body(model)` is the request body; RequestError on failure.
        `urgent` (a retry): it gets the next free slot, before requests that are first tries."""
        ep = await self.acquire(urgent)
        fault = None
        try:
            model = await self.model_for(ep, timeout)
            t0 = time.monotonic()
            obj = await self._call("POST", ep, "/chat/completions", make_body(model), timeout)
            try:
                choice = obj["choices"][0]
                content = choice["message"].get("content")
                finish = choice.get("finish_reason")
            except (KeyError, IndexError, TypeError, AttributeError):
                raise RequestError(f"malformed answer from {ep.base}: no choices[0].message", True) from None
            fault = False
            usage = obj.get("usage") if isinstance(obj.get("usage"), dict) else {}
            return Answer(content if isinstance(content, str) else None, finish, usage, model, ep.base,
                          time.monotonic() - t0)
        except RequestError as e:
            e.endpoint = ep.base
            fault = True if e.endpoint_fault else (False if e.status else None)
            raise
        finally:
            await release_shielded(self, ep, fault)


async def release_shielded(pool: Pool, ep: Endpoint, fault: bool | None) -> None:
    """Release even while the request's task is being cancelled (the shielded release still runs)."""
    await asyncio.shield(pool.release(ep, fault))
