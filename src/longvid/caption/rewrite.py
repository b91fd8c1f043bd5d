"""The optional second pass (caption.rewrite): a caption rewritten by a text model through the same API.

After a clip is captioned (status ok or truncated), its `text` is sent, text only, with the rewrite
prompt to the same endpoints (`rewrite.model`, or the caption model), when `rewrite.when` is `always`
or the caption is over the text encoder's limit (`over_limit`, the default: a dense caption over 226 T5
tokens is shortened rather than cut off by the encoder). The answer passes the same quality gates; a
good one becomes `text` and is appended to `caps` (the original stays there), the record gains the
flag `rewritten` and `tokens.rewrite` (prompt, completion). Transient failures are retried like
caption requests; a rewrite that still fails, or answers badly, leaves the caption as it was, with the
flag `rewrite_failed` and the reason in the record's note.
"""

from __future__ import annotations

import asyncio
import random

from longvid.caption import quality
from longvid.caption.client import Pool
from longvid.caption.errors import NoEndpoint, RequestError, backoff_delay
from longvid.caption.payload import WORDS_PER_T5_TOKEN

PROMPT = ("Rewrite this text-to-video training caption in at most {words} words. Keep the subjects, their "
          "colours and motion, the setting and any camera motion; drop measurements, hedging and repetition. "
          "Answer with the rewritten caption only.\n\nCaption: {caption}")


def wanted(ccfg: dict, rec: dict) -> bool:
    rcfg = ccfg.get("rewrite")
    if not rcfg or rec["status"] not in ("ok", "truncated") or not rec["text"]:
        return False
    return rcfg["when"] == "always" or quality.t5_tokens(rec["text"])[0] > ccfg["max_text_tokens"]


def body(ccfg: dict, model: str, text: str) -> dict:
    rcfg = ccfg["rewrite"]
    words = int(ccfg["max_text_tokens"] * WORDS_PER_T5_TOKEN * 0.9)
    prompt = (rcfg["prompt"] or PROMPT).format(caption=text, words=words)
    return {"model": rcfg["model"] or model, "messages": [{"role": "user", "content": prompt}],
            "temperature": rcfg["temperature"], "max_tokens": rcfg["max_tokens"], "seed": ccfg["seed"]}


def failed(rec: dict, why: str) -> dict:
    note = f"{rec['note']}; rewrite failed: {why}" if rec["note"] else f"rewrite failed: {why}"
    return {**rec, "note": note, "flags": sorted(set(rec["flags"]) | {"rewrite_failed"})}


async def rewrite(pool: Pool, ccfg: dict, rec: dict, rng=random) -> dict:
    """`rec` with its text rewritten (see the module doc); never raises for the clip's own failure."""
    transient = 0
    while True:
        try:
            ans = await pool.complete(lambda model: body(ccfg, model, rec["text"]), ccfg["timeout"],
                                      urgent=transient > 0)
        except NoEndpoint:
            raise
        except RequestError as e:
            transient += 1
            if not e.retry or transient >= ccfg["attempts"]:
                return failed(rec, str(e))
            await asyncio.sleep(backoff_delay(transient, ccfg["backoff"], e.retry_after, rng))
            continue
        v = quality.assess(ans.content, ans.finish_reason, ccfg["max_text_tokens"])
        if v.bad:
            return failed(rec, f"bad answer ({', '.join(f for f in v.flags if f != 'over_t5')})")
        tokens = {k: val for k, val in rec["tokens"].items() if k not in ("t5", "t5_est")}
        tokens["t5" if v.t5_exact else "t5_est"] = v.t5
        tokens["rewrite"] = {"prompt": ans.usage.get("prompt_tokens"), "completion": ans.usage.get("completion_tokens")}
        caps = rec["caps"] + ([v.text] if v.text not in rec["caps"] else [])
        flags = (set(rec["flags"]) - {"over_t5"}) | {"rewritten"} | ({"over_t5"} if "over_t5" in v.flags else set())
        return {**rec, "text": v.text, "caps": caps, "tokens": tokens, "flags": sorted(flags),
                "attempts": rec["attempts"] + transient + 1}
