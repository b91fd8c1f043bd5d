"""The `transformers` caption backend: a local VLM (longvid.caption.local_vlm) in the caption job.

For users without a server: `caption.transformers.path` names a Qwen2-VL / Qwen2.5-VL model
directory; clips are captioned `batch_size` at a time (one generate call), the next batch's frames
decoded by a thread while the model runs. Everything around it is the openai backend's: the per-shard
cache and resume (longvid.caption.shard), the quality gates and statuses (longvid.caption.captioner:
empty, repetition loops, truncation, boilerplate; bad answers asked again at temperature 0.7 with a
new seed when caption.on_bad_caption is `retry`), the stored record. An undecodable clip is that
clip's error; a failing batch (out of memory, say) fails the job, keeping what finished in the cache.
Request-only settings (endpoints, concurrency, timeouts, attempts, mode) do not apply.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from longvid.caption import frames as cframes
from longvid.caption import payload
from longvid.caption.captioner import BAD_RETRIES, BAD_TEMPERATURE, caption_texts, final_status, record
from longvid.caption.shard import run_shard
from longvid.io import InputError, one_line

log = logging.getLogger(__name__)
BAD = {"empty", "repetition", "truncated", "not_json"}


def decode_batch(rows: list[dict], ccfg: dict, factor: int) -> list:
    """Each row's Frames (RGB) or the one-line reason it could not be decoded."""
    out = []
    for row in rows:
        try:
            if factor != cframes.PATCH:
                raise ValueError(f"the model wants sides in multiples of {factor}, frames come in {cframes.PATCH}")
            out.append(cframes.prepare(row, ccfg, encode=False))
        except Exception as e:  # noqa: BLE001 - an undecodable clip is that clip's error
            out.append(one_line(e))
    return out


def caption_batch(vlm, ccfg: dict, rows: list[dict], frames: list) -> list[dict]:
    """The records of one batch: generate, gate, ask bad answers again (as a smaller batch)."""
    prompt = payload.prompt_text(ccfg)
    recs: dict[str, dict] = {}
    live = []
    for row, f in zip(rows, frames):
        if isinstance(f, str):
            recs[row["id"]] = record(row, ccfg, "error", f"decode failed: {f}", None, 0)
        else:
            live.append((row, f))
    temperature, seed, tries = ccfg["temperature"], ccfg["seed"], 0
    while live:
        tries += 1
        answers = vlm.generate([f for _, f in live], prompt, ccfg["max_tokens"], temperature, ccfg["top_p"], seed)
        again = []
        for (row, f), ans in zip(live, answers):
            caps, text, flags = caption_texts(ccfg, ans.content, ans.finish_reason)
            if BAD & set(flags) and ccfg["on_bad_caption"] == "retry" and tries <= BAD_RETRIES:
                again.append((row, f))
                continue
            status, error = final_status(flags, ans.finish_reason)
            if status == "error":
                caps, text = [], ""
            if tries > 1:
                error = f"{error} (after {tries - 1} retries of bad answers)" if error else ""
                flags = sorted(set(flags) | {"retried"})
            recs[row["id"]] = record(row, ccfg, status, error, f, tries, caps=caps, text=text, model=ans.model,
                                     usage=ans.usage, flags=flags)
        live, temperature, seed = again, BAD_TEMPERATURE, ccfg["seed"] + tries
    return [recs[r["id"]] for r in rows]


def caption_shard(cfg: dict, clips: Path, out: Path, name: str, cache: Path | None = None) -> int:
    """The caption stage with caption.backend transformers (see the module doc)."""
    ccfg = cfg["caption"]
    local = ccfg["transformers"]

    def caption_todo(todo, cc, fps, cache_path):
        if not local.get("path"):
            raise InputError("caption.transformers.path: backend transformers needs a model directory")
        from longvid.caption.local_vlm import LocalVLM

        vlm = LocalVLM(local["path"], local["device"], local["dtype"])
        log.info("%s: %s loaded on %s", name, local["path"], vlm.device)
        size = local["batch_size"]
        batches = [todo[i:i + size] for i in range(0, len(todo), size)]
        done = 0
        with ThreadPoolExecutor(1, thread_name_prefix="caption-decode") as pool:
            ahead = pool.submit(decode_batch, batches[0], ccfg, vlm.factor)
            for k, rows in enumerate(batches):
                frames = ahead.result()
                if k + 1 < len(batches):  # decode the next batch while this one generates
                    ahead = pool.submit(decode_batch, batches[k + 1], ccfg, vlm.factor)
                for rec in caption_batch(vlm, ccfg, rows, frames):
                    cc.put(rec, fps[rec["id"]])
                done += len(rows)
                log.info("%s: %d/%d clips captioned", name, done, len(todo))

    return run_shard(cfg, clips, out, name, cache, "transformers", caption_todo)
