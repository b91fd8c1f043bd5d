"""`urls` source: download videos over http(s), s3://, gs:// (any fsspec protocol) — parallel,
resumable, size/sha256-checked, atomic.

Config keys (the dataset's `source` section; defaults live in longvid/schemas/dataset.schema.yaml):

    type: urls
    list: urls.csv           .txt: one URL per line (# comments); .csv/.tsv: header with `url` and
                             optional `sha256`, `bytes`, `caption`; .jsonl/.json: objects with `url`
                             and optional `sha256`, `bytes`, `caption` (str) or `captions` (list of
                             str or {text, start, end}), `meta` (dict), `source` (the identity
                             the id hashes; default: the redacted URL). Other columns go to `meta`.
    urls: [...]              instead of `list`: the same entries inline (strings or objects)
    workers: 8               parallel downloads
    retries: 4               further attempts after a failed one (network errors, 5xx, 408, 429)
    timeout_s: 60            socket timeout (connect, and between received bytes)
    backoff_s: 1.0           wait before retry n is backoff_s * 2**n (capped at 60 s; Retry-After wins)
    storage_options: {}      passed to fsspec for non-http URLs (e.g. {anon: true} for public S3)

A video is downloaded to `.<id><ext>.part` beside its final name `<id><ext>` and renamed only once
its size and sha256 (when the list gives them) match, so a file under its final name is complete and
a rerun neither downloads nor re-hashes it. Interrupted downloads (dropped connection, killed job)
resume from the partial file (see `download` for how). Failures become error rows; the others go on.
URLs can carry secrets (API keys, pre-signed signatures, user:password@): the manifest `source`,
errors and logs carry `redact(url)`, and the id is the hash of that, so it survives a re-signed URL.
s3:// and gs:// need the `cloud` extra (s3fs, gcsfs); a missing backend is reported before any
download starts.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from longvid import config as lvconfig
from longvid.ingest import manifest
from longvid.ingest.sources.download import download_all, redact
from longvid.io import InputError, json_object

ENTRY_KEYS = ("url", "sha256", "bytes", "caption", "captions", "meta", "source")


def normalise(raw, where: str) -> dict:
    """One list entry as {url, sha256, bytes, captions, meta, source}; InputError names `where`."""
    raw = {"url": raw} if isinstance(raw, str) else raw
    if not isinstance(raw, dict):
        raise InputError(f"{where}: expected a URL or an object with `url`, got {type(raw).__name__}")
    url = str(raw.get("url") or "").strip()
    if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", url):
        raise InputError(f"{where}: not a URL: {redact(url)!r}")
    sha = str(raw.get("sha256") or "").strip().lower() or None
    if sha is not None and not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise InputError(f"{where}: sha256 must be 64 hex digits, got {sha!r}")
    size = raw.get("bytes")
    if size in ("", None):
        size = None
    else:
        try:
            size = int(size)
        except (TypeError, ValueError):
            raise InputError(f"{where}: bytes must be an integer, got {size!r}") from None
    caps = raw.get("captions") or ([raw["caption"]] if raw.get("caption") else [])
    if not isinstance(caps, list):
        raise InputError(f"{where}: captions must be a list")
    if not all(isinstance(c, str) or (isinstance(c, dict) and "text" in c) for c in caps):
        raise InputError(f"{where}: each caption must be a string or an object with `text`")
    caps = [manifest.caption(c) if isinstance(c, str) else
            manifest.caption(c["text"], c.get("start"), c.get("end")) for c in caps]
    meta = dict(raw.get("meta") or {})
    meta.update({k: v for k, v in raw.items() if k not in ENTRY_KEYS and v not in ("", None)})
    return {"url": url, "sha256": sha, "bytes": size, "captions": caps, "meta": meta,
            "source": raw.get("source") or redact(url)}


def read_list(source: dict) -> list[dict]:
    """Normalised entries from `urls:` or the `list:` file, the first of each video kept."""
    if source["urls"] and source["list"]:
        raise InputError("source.list: give `list` or `urls`, not both")
    if source["urls"]:
        entries = [normalise(u, f"source.urls[{i}]") for i, u in enumerate(source["urls"])]
    else:
        if not source["list"]:
            raise InputError("source.list: required for a urls source (or give `urls: [...]`)")
        path = Path(source["list"])
        if not path.is_file():
            raise InputError(f"source.list: no such file: {path}")
        entries = [normalise(raw, where) for raw, where in _list_file(path)]
    unique: dict[str, dict] = {}  # by source: URLs that differ only in a signature are one video
    for e in entries:
        unique.setdefault(e["source"], e)
    return list(unique.values())


def _list_file(path: Path):
    suffix = path.suffix.lower()
    with open(path, newline="") as f:
        if suffix in (".csv", ".tsv"):
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            if "url" not in (reader.fieldnames or []):
                raise InputError(f"{path}: the header has no `url` column ({reader.fieldnames})")
            for row in reader:
                yield row, f"{path}:{reader.line_num}"
        elif suffix == ".json":
            data = json_object(f.read(), str(path), kind=list)
            yield from ((raw, f"{path}[{i}]") for i, raw in enumerate(data))
        elif suffix == ".jsonl":
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line), f"{path}:{lineno}"
                    except json.JSONDecodeError as e:
                        raise InputError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        else:
            for lineno, line in enumerate(f, 1):
                if line.strip() and not line.lstrip().startswith("#"):
                    yield line.strip(), f"{path}:{lineno}"


def download_options(source: dict) -> dict:
    """The download keys of a source section (shared by `pixabay` and `annotations`). pixabay has
    no storage_options: its videos are always http(s)."""
    return {"workers": source["workers"], "retries": source["retries"], "timeout": source["timeout_s"],
            "backoff": source["backoff_s"], "storage_options": source.get("storage_options")}


def fetch(source: dict, out_dir: Path) -> list[dict]:
    source = lvconfig.source(source)
    return download_all(read_list(source), Path(out_dir), **download_options(source))
