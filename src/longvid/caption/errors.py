"""Failed requests, classified: what is retried, what shrinks the input, how long to wait.

* `classify`: the `RequestError` of a non-200 answer. Retried: 408/409/425/429 and 5xx (connection
  errors and timeouts are raised retryable by the client). Of the answers only a 503 (unavailable:
  warming up, overloaded) counts against the endpoint (`endpoint_fault`); a server answering a plain
  500/502/504 is up, and taking it out would idle it. Not retried: other 4xx and the known
  deterministic 500s (Qwen3-VL's "timestamps length ... should be equal video length", "Expected
  reading N frames"). A 400/413 for too many visual tokens (vLLM's "exceeds the pre-allocated encoder
  cache size", a prompt over the model length) sets `shrink`: the caller may retry once with fewer
  frames and pixels. A 400 naming a content policy is `blocked`.
* `retry_after_seconds`: retry-after-ms or Retry-After (seconds).
* `backoff_delay`: full-jitter exponential backoff, capped at 30 s; a Retry-After wins (at most 60 s).
Messages are one line (whitespace collapsed, at most 400 characters).
"""

from __future__ import annotations

import json
import random
import re

BACKOFF_CAP = 30.0
RETRY_AFTER_CAP = 60.0
SHRINK = re.compile(r"encoder cache|too many (?:visual|image|video|multimodal) tokens|pre-allocated|"
                    r"maximum (?:context|model) length|max_model_len|longer than the maximum|prompt is too long|"
                    r"context length", re.I)
DETERMINISTIC_500 = re.compile(r"timestamps length|should be equal video length|Expected reading \d+ frames", re.I)
BLOCKED = re.compile(r"content[ _-]?(?:policy|filter|management)|safety system|moderation", re.I)
RETRY_STATUS = {408, 409, 425, 429}


class RequestError(Exception):
    """A failed request. `retry`: another try may succeed; `shrink`: fewer frames/pixels may;
    `endpoint_fault`: counts against the endpoint; `connect`: it never reached the server."""

    def __init__(self, message: str, retry: bool, *, status: int | None = None, shrink: bool = False,
                 endpoint_fault: bool = False, connect: bool = False, retry_after: float | None = None,
                 blocked: bool = False):
        super().__init__(" ".join(message.split())[:400])
        self.retry, self.status, self.shrink, self.blocked = retry, status, shrink, blocked
        self.endpoint_fault, self.connect, self.retry_after = endpoint_fault, connect, retry_after
        self.endpoint: str | None = None  # the base URL it came from (set by Pool)


class NoEndpoint(RuntimeError):
    """Every endpoint has been out for longer than the pool's down_timeout."""


def retry_after_seconds(headers) -> float | None:
    """Seconds from retry-after-ms or Retry-After (seconds; an HTTP date is not honoured), or None."""
    for name, scale in (("retry-after-ms", 1e-3), ("Retry-After", 1.0)):
        value = headers.get(name) if headers is not None else None
        try:
            if value is not None and float(value) >= 0:
                return float(value) * scale
        except ValueError:
            continue
    return None


def server_message(text: str) -> str:
    """The error message of an OpenAI-style error body ({"error": {"message"}} or {"message"}), else the text."""
    try:
        obj = json.loads(text)
        err = obj.get("error", obj) if isinstance(obj, dict) else obj
        msg = err.get("message", err) if isinstance(err, dict) else err
        return str(msg)
    except (ValueError, AttributeError):
        return text


def classify(status: int, text: str, headers=None) -> RequestError:
    """The RequestError of a non-200 answer (see the module doc)."""
    msg = f"HTTP {status}: {server_message(text)[:300]}"
    after = retry_after_seconds(headers)
    if status in (400, 413) and SHRINK.search(text):
        return RequestError(msg, False, status=status, shrink=True)
    if status == 400 and BLOCKED.search(text):
        return RequestError(msg, False, status=status, blocked=True)
    if status in RETRY_STATUS:
        return RequestError(msg, True, status=status, retry_after=after)
    if status >= 500:
        if status == 500 and DETERMINISTIC_500.search(text):
            return RequestError(msg, False, status=status)
        return RequestError(msg, True, status=status, endpoint_fault=status == 503, retry_after=after)
    return RequestError(msg, False, status=status)


def backoff_delay(retry: int, base: float, retry_after: float | None = None, rng=random) -> float:
    """Seconds before retry number `retry` (1, 2, ...): uniform in [0, min(30, base * 2^(retry-1))]
    ("full jitter"), or the server's Retry-After (at most 60 s)."""
    if retry_after is not None:
        return min(retry_after, RETRY_AFTER_CAP)
    return rng.uniform(0, min(BACKOFF_CAP, base * 2 ** (retry - 1)))
