"""One clip's caption: requests, retries and quality gates until the clip has its status.

`caption_clip` ends every clip with a record (never raises for a clip's own failure):

* status `ok`; `truncated` (finish_reason length, or a repetition loop cut off: the text is kept);
  `blocked` (finish_reason content_filter, or a 400 naming a content policy); `error` with a one-line
  reason (`text` ""): retries spent, a deterministic 4xx/500, an empty or unparseable answer.
  (401/403/404 say the job's key, model or URL is wrong: marked transient, so a fixed rerun retries.)
* Transient failures (connection, timeout, 429, 5xx, malformed answers) are retried up to
  caption.attempts times with full-jitter backoff (a Retry-After wins); the clip holds no request slot
  while it backs off, and its retry takes the next free slot before first tries. A refused connection while
  another endpoint is up is not charged to the clip: it fails over at once (the endpoint is taken
  out by the pool). A "too many visual tokens" 400 retries ONCE with half the frames and pixels
  (caption.shrink_on_400). `transient` in the record says a rerun may do better: the cache does not
  reuse such errors.
* Bad answers (empty, repetition loop, truncated, structured answer without the JSON fields) with
  caption.on_bad_caption `retry` are asked again up to 2 times at temperature 0.7 with a new seed
  (seed + try); `keep` takes the first answer and marks its status.
"""

from __future__ import annotations

import asyncio
import random

from longvid.caption import payload, quality
from longvid.caption.client import Pool
from longvid.caption.errors import NoEndpoint, RequestError, backoff_delay
from longvid.caption.frames import Frames

BAD_RETRIES = 2
BAD_TEMPERATURE = 0.7


def caption_texts(cfg: dict, content: str | None, finish: str | None) -> tuple[list[str], str, list[str]]:
    """(caps, text, flags) of an answer, quality-gated; structured: caps = [dense, short]."""
    parsed = payload.parse_answer(cfg, content)
    if parsed is None:
        return [], "", ["empty", "not_json"] + (["truncated"] if finish == "length" else [])
    if not cfg["structured"]:
        v = quality.assess(parsed["caption"], finish, cfg["max_text_tokens"])
        return ([v.text] if v.text else []), v.text, v.flags
    got = {k: quality.assess(parsed.get(k), finish, cfg["max_text_tokens"]) for k in ("dense", "short")}
    flags = sorted({f for k, v in got.items() for f in v.flags if f != "over_t5" and f != "empty"})
    text = got[cfg["text"]].text
    if not text:  # a cut-off object may hold only the dense caption
        other = "dense" if cfg["text"] == "short" else "short"
        text = got[other].text
        flags.append("text_fallback") if text else None
    if not text:
        flags.append("empty")
    if quality.t5_tokens(text)[0] > cfg["max_text_tokens"]:
        flags.append("over_t5")
    return [got[k].text for k in ("dense", "short") if got[k].text], text, flags


def final_status(flags: list[str], finish: str | None) -> tuple[str, str]:
    """(status, reason): the reason of an error/blocked clip becomes caption_error; a truncated one's
    goes to caption_note (caption_error stays "" for clips with a caption: the dataset stats count
    clips with a caption_error as uncaptioned)."""
    if finish == "content_filter":
        return "blocked", "finish_reason content_filter"
    if "not_json" in flags:
        return "error", "answer is not the requested JSON object"
    if "empty" in flags:
        return "error", "empty answer"
    if "repetition" in flags:
        return "truncated", "repetition loop cut off"
    if "truncated" in flags:
        return "truncated", "finish_reason length (max_tokens)"
    return "ok", ""


def record(row: dict, cfg: dict, status: str, error: str, frames: Frames | None, attempts: int, *,
           caps=(), text: str = "", model: str = "", usage: dict | None = None, flags=(), transient=False,
           endpoint: str = "") -> dict:
    usage = usage or {}
    t5, exact = quality.t5_tokens(text)
    note = ""
    if status in ("ok", "truncated"):
        note, error = error, ""
    return {"id": row["id"], "status": status, "error": error, "note": note, "transient": transient,
            "caps": list(caps),
            "text": text, "model": model, "prompt": payload.prompt_id(cfg),
            "frames": frames.describe() if frames is not None else {"count": 0, "indices": []},
            "attempts": attempts, "flags": list(flags), "endpoint": endpoint,
            "tokens": {"prompt": usage.get("prompt_tokens"), "completion": usage.get("completion_tokens"),
                       ("t5" if exact else "t5_est"): t5}}


async def caption_clip(pool: Pool, cfg: dict, row: dict, frames: Frames, reframe, rng=random) -> dict:
    """The caption record of clip `row` from its prepared `frames`; `reframe(shrink)` is an async
    function giving the frames again at a shrink level (after a too-many-tokens 400)."""
    attempts = transient = bad = free_tries = 0
    temperature, seed = cfg["temperature"], cfg["seed"]
    shrunk = False
    # Hard bound on requests: transient tries, the bad-caption retries, one shrink, failovers.
    limit = cfg["attempts"] + BAD_RETRIES + 1 + 2 * len(pool.endpoints)
    while attempts < limit:
        attempts += 1
        try:
            ans = await pool.complete(lambda model: payload.build_body(cfg, model, frames, temperature, seed),
                                      cfg["timeout"], urgent=attempts > 1)  # a retry goes first
        except NoEndpoint:
            raise
        except RequestError as e:
            if e.blocked:
                return record(row, cfg, "blocked", str(e), frames, attempts)
            if e.shrink and cfg["shrink_on_400"] and not shrunk and cfg["mode"] != "video_file":
                shrunk = True
                try:
                    frames = await reframe(frames.shrunk + 1)
                except (ValueError, OSError) as d:
                    return record(row, cfg, "error", f"decode failed: {d}", frames, attempts)
                continue
            if not e.retry:  # 401/403/404 are the job's settings (key, model, URL), not the clip's
                note = " (after a retry with half the frames and pixels)" if shrunk else ""
                return record(row, cfg, "error", f"{e}{note}", frames, attempts,
                              transient=e.status in (401, 403, 404))
            if e.connect and free_tries < 2 * len(pool.endpoints) and any(
                    ep.up and ep.base != e.endpoint for ep in pool.endpoints):
                free_tries += 1  # fail over to another endpoint at once
                continue
            transient += 1
            if transient >= cfg["attempts"]:
                return record(row, cfg, "error", f"{e} (gave up after {attempts} attempts)", frames, attempts,
                              transient=True)
            await asyncio.sleep(backoff_delay(transient, cfg["backoff"], e.retry_after, rng))
            continue
        caps, text, flags = caption_texts(cfg, ans.content, ans.finish_reason)
        done = dict(caps=caps, text=text, model=ans.model, usage=ans.usage, flags=flags, endpoint=ans.endpoint)
        blocked = ans.finish_reason == "content_filter"
        if not blocked and {"empty", "repetition", "truncated", "not_json"} & set(flags) \
                and cfg["on_bad_caption"] == "retry" and bad < BAD_RETRIES:
            bad += 1
            temperature, seed = BAD_TEMPERATURE, cfg["seed"] + bad
            continue
        status, error = final_status(flags, ans.finish_reason)
        if status in ("error", "blocked"):
            done.update(caps=[], text="")
        if bad:
            error = f"{error} (after {bad} retries of bad answers)" if error else ""
            done["flags"] = sorted(set(flags) | {"retried"})
        return record(row, cfg, status, error, frames, attempts, **done)
    return record(row, cfg, "error", f"no answer within {limit} requests", frames, attempts, transient=True)
