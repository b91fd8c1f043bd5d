"""What every model-backed caption backend does with a shard, around the captioning itself.

`run_shard(cfg, clips, out, name, cache, backend, caption_todo)`:

1. Reads the filtered shard table. Kept clips whose caption is in the per-shard cache (same
   settings, same clip file: longvid.caption.cache) are done; the rest are `todo`.
2. `caption_todo(todo, cc, fps, cache_path)` captions them (the backend: `openai`, `transformers`),
   putting each finished record into the cache `cc` as it arrives.
3. A shard where every clip to caption failed transiently (all endpoints erroring) fails the job
   rather than publish an uncaptioned table; the cache keeps whatever did finish.
4. Last, the declared output: every row of the input, rejected ones unchanged, kept ones with caps,
   text, caption_source (the backend), caption_status (ok|truncated|blocked|error), caption_error
   ("" unless error/blocked: the text is then ""), caption_note (why truncated), caption_model,
   caption_prompt, caption_frames {count, indices, width, height, fps, shrunk}, caption_attempts,
   caption_tokens {prompt, completion, t5_est (or t5 when counted with a cached T5 tokenizer)},
   caption_flags.
"""

from __future__ import annotations

import collections
import logging
from pathlib import Path
from typing import Callable

from longvid.caption import cache as ccache
from longvid.io import read_jsonl, write_jsonl

log = logging.getLogger(__name__)

OUTPUT_KEYS = {"caps": "caps", "text": "text", "caption_status": "status", "caption_error": "error",
               "caption_note": "note", "caption_model": "model", "caption_prompt": "prompt",
               "caption_frames": "frames", "caption_attempts": "attempts", "caption_tokens": "tokens",
               "caption_flags": "flags"}
CaptionTodo = Callable[[list[dict], ccache.CaptionCache, dict[str, str], Path], None]


def default_cache_path(out: Path) -> Path:
    """Without a `cache` argument: a hidden file beside the output (not a declared output, so
    Snakemake leaves it alone)."""
    return out.with_name(f".{out.stem}.caption_cache.jsonl")


def captioned_row(row: dict, rec: dict, backend: str = "openai") -> dict:
    return {**row, "caption_source": backend, **{k: rec.get(v) for k, v in OUTPUT_KEYS.items()}}


def run_shard(cfg: dict, clips: Path, out: Path, name: str, cache: Path | None, backend: str,
              caption_todo: CaptionTodo) -> int:
    ccfg = cfg["caption"]
    rows = list(read_jsonl(clips))
    kept = [r for r in rows if r.get("keep")]
    cache_path = Path(cache) if cache is not None else default_cache_path(Path(out))
    settings = ccache.settings_fingerprint(ccfg, cfg.get("stage_version", ""))
    with ccache.CaptionCache(cache_path) as cc:
        fps = {r["id"]: ccache.clip_fingerprint(settings, r) for r in kept}
        todo = [r for r in kept if cc.get(r["id"], fps[r["id"]]) is None]
        log.info("%s: %d kept clips, %d cached, %d to caption", name, len(kept), len(kept) - len(todo), len(todo))
        if todo:
            caption_todo(todo, cc, fps, cache_path)
        recs = {r["id"]: cc.entries[r["id"]] for r in kept}
    if todo and all(recs[r["id"]].get("transient") for r in todo):
        why = collections.Counter(recs[r["id"]]["error"] for r in todo).most_common(1)[0][0]
        raise RuntimeError(f"{name}: none of {len(todo)} clips could be captioned; e.g. {why}")
    write_jsonl(out, (captioned_row(r, recs[r["id"]], backend) if r.get("keep") else r for r in rows))
    counts = collections.Counter(recs[i]["status"] for i in recs)
    log.info("%s: captioned %d kept clips (%s)", name, len(kept), ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 0
