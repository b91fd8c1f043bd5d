"""The per-shard caption cache: finished captions kept across killed, failed and repeated jobs.

It lies OUTSIDE the stage's declared output on purpose (the caller passes its path, by convention
data/caption_cache/{dataset}/{shard}.jsonl): Snakemake deletes the outputs of a failed job, and a
caption that cost a GPU second must survive that.

* Append-only JSONL, one line per finished clip, written and fsynced as it arrives; a line torn by a
  kill is dropped (and cut off the file) when the cache is opened; a later line for a clip wins.
* Each line carries `fp`: `fingerprint(settings, clip)` of the caption settings that shape the
  text (model, prompt, sampling, frames, ...: `TEXT_KEYS`; not endpoints, concurrency or retries)
  and of the clip file (path, size, mtime). `get` returns a line only for the same fingerprint, so a
  rerun with the same settings reuses it and a changed prompt (or a re-cut clip) recaptions.
* An error record marked `transient` (retries spent on timeouts, 5xx, ...) is not reused: the
  rerun tries that clip again. Deterministic outcomes (ok, truncated, blocked, a 400) are.
* One job at a time: the file is locked (flock) while open; a second job on the shard fails at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
from pathlib import Path

from longvid.io import dumps_row

log = logging.getLogger(__name__)

# caption keys that change what a caption says (or how it was asked for)
TEXT_KEYS = ("model", "prompt", "mode", "fps", "min_frames", "max_frames", "max_pixels", "jpeg_quality",
             "temperature", "top_p", "max_tokens", "seed", "structured", "text", "max_text_tokens",
             "shrink_on_400", "on_bad_caption")


def settings_fingerprint(cfg: dict, version: int | str = "") -> str:
    """Digest of the caption section's TEXT_KEYS (+ the server's model, a local model's path and
    dtype, a rewrite pass) and the stage version."""
    picked = {k: cfg.get(k) for k in TEXT_KEYS}
    picked["server_model"] = (cfg.get("server") or {}).get("model")
    if cfg.get("backend") == "transformers":  # openai caches of earlier versions keep their digests
        local = cfg.get("transformers") or {}
        picked["local"] = [local.get("path"), local.get("dtype")]
    if cfg.get("rewrite"):
        picked["rewrite"] = cfg["rewrite"]
    return hashlib.sha256(json.dumps([picked, version], sort_keys=True).encode()).hexdigest()[:16]


def clip_fingerprint(settings: str, row: dict) -> str:
    """`settings` combined with the clip file's identity (path, size, mtime)."""
    try:
        st = os.stat(row["path"])
        ident = [row["path"], st.st_size, st.st_mtime_ns]
    except (OSError, KeyError, TypeError):
        ident = [row.get("path"), None, None]
    return hashlib.sha256(json.dumps([settings, row["id"], ident]).encode()).hexdigest()[:16]


class CaptionCache:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.entries: dict[str, dict] = {}
        self._f = open(self.path, "a+b")
        try:
            fcntl.flock(self._f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._f.close()
            raise RuntimeError(f"{self.path}: another job is captioning this shard (the cache is locked)") from None
        self._load()

    def _load(self) -> None:
        self._f.seek(0)
        good = bad = 0
        for line in self._f:
            if not line.endswith(b"\n"):
                break  # a torn last line (killed mid-write): dropped below
            good += len(line)
            try:
                rec = json.loads(line)
                self.entries[rec["id"]] = rec
            except (ValueError, KeyError, TypeError):
                bad += 1  # a damaged line inside the file: skipped, the clip is captioned again
        if bad:
            log.warning("%s: %d unreadable lines skipped", self.path, bad)
        if good < self._f.tell():
            log.warning("%s: dropped a torn last line", self.path)
            self._f.truncate(good)
        self._f.seek(0, os.SEEK_END)

    def get(self, clip_id: str, fp: str) -> dict | None:
        """The finished record of `clip_id` under fingerprint `fp`, if reusable."""
        rec = self.entries.get(clip_id)
        if rec is None or rec.get("fp") != fp or rec.get("transient"):
            return None
        return rec

    def put(self, rec: dict, fp: str) -> None:
        """Append `rec` (it has "id") under `fp`, durably: flushed and fsynced before returning."""
        rec = {**rec, "fp": fp}
        self._f.write((dumps_row(rec) + "\n").encode())
        self._f.flush()
        os.fsync(self._f.fileno())
        self.entries[rec["id"]] = rec

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()  # closing releases the lock

    def __enter__(self) -> CaptionCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
