"""`urls` source: download videos over http(s), s3:// or gs:// — parallel, resumable, verified, atomic.

Config: type: urls, list: a file with one URL per line, or CSV/JSONL with columns url[, sha256][,
bytes][, caption]; or `urls: [...]` inline; workers: 8, retries: 4, timeout_s: 60.

Each file is downloaded to `<id>.<ext>.part` and renamed into place only once its size and sha256
(when known) match, so a file that exists under its final name is complete. An interrupted download
(dropped connection, killed job) resumes from the partial file with an HTTP Range request when the
server supports it. A finished file is not downloaded again. Every failure becomes an error row (URL
with its query string removed, so API keys never reach the manifest or the log) and the rest go on.
s3/gs go through fsspec and need the `cloud` extra (s3fs, gcsfs).
"""

from __future__ import annotations

import csv
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit, urlunsplit

from longvid.ingest import manifest
from longvid.io import InputError

log = logging.getLogger(__name__)
# urllib3 logs every request line, query string included, at DEBUG: with `longvid -v` that would put
# API keys (Pixabay's is a query parameter) into job logs.
logging.getLogger("urllib3").setLevel(logging.INFO)
CHUNK = 1 << 20


def redact(url: str) -> str:
    """The URL without query string and credentials: safe to log and to store."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def scrub(message: str, url: str) -> str:
    """One line, with the URL's query string (where API keys live) removed wherever it appears."""
    query = urlsplit(url).query
    message = message.replace(url, redact(url))
    if query:
        message = message.replace(query, "<redacted>")
    return " ".join(message.split())


def read_list(source: dict) -> list[dict]:
    """Entries {url, sha256?, bytes?, caption?} from `urls:` or the `list:` file."""
    if source.get("urls"):
        return [{"url": u} if isinstance(u, str) else dict(u) for u in source["urls"]]
    path = Path(source.get("list") or "")
    if not path.is_file():
        raise InputError(f"source.list: {path} is not a file (or give `urls: [...]`)")
    text = path.read_text()
    if path.suffix == ".jsonl":
        entries = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    entries.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise InputError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    elif path.suffix in (".csv", ".tsv"):
        entries = list(csv.DictReader(text.splitlines(), delimiter="\t" if path.suffix == ".tsv" else ","))
    else:
        entries = [{"url": line.strip()} for line in text.splitlines() if line.strip() and not line.startswith("#")]
    for i, e in enumerate(entries, 1):
        if not e.get("url"):
            raise InputError(f"{path}: entry {i} has no `url`")
    return entries


def target_path(out_dir: Path, url: str) -> Path:
    ext = PurePosixPath(urlsplit(url).path).suffix.lower() or ".mp4"
    return Path(out_dir) / f"{manifest.video_id(redact(url))}{ext}"


def _http_download(url: str, part: Path, timeout: float) -> None:
    import requests

    have = part.stat().st_size if part.exists() else 0
    # identity: byte offsets of a Range resume must be offsets in the file, not in a gzip stream
    headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={have}-"} if have else {})}
    with requests.get(url, headers=headers, stream=True, timeout=timeout) as r:
        if r.status_code == 416:  # the partial file is already complete
            return
        r.raise_for_status()
        mode = "ab" if have and r.status_code == 206 else "wb"  # 200: server ignored Range, restart
        with open(part, mode) as f:
            # read1 hands over whatever has arrived, so bytes received before a dropped connection
            # reach the partial file and the retry resumes after them
            while block := r.raw.read1(CHUNK):
                f.write(block)
        expected = r.headers.get("Content-Length")
        if expected is not None and part.stat().st_size < int(expected) + (have if mode == "ab" else 0):
            raise IOError("connection closed before the end of the file")


def _fsspec_download(url: str, part: Path) -> None:
    import fsspec

    try:
        with fsspec.open(url, "rb") as src, open(part, "wb") as dst:
            while block := src.read(CHUNK):
                dst.write(block)
    except ImportError as e:
        raise RuntimeError(f"{urlsplit(url).scheme}:// needs the `cloud` extra ({e})") from None


def download(entry: dict, out_dir: Path, retries: int, timeout: float) -> dict:
    url = entry["url"]
    safe = redact(url)
    path = target_path(out_dir, url)
    sha, size = entry.get("sha256") or None, int(entry["bytes"]) if entry.get("bytes") else None
    caps = [manifest.caption(entry["caption"])] if entry.get("caption") else []
    meta = {k: v for k, v in entry.items() if k not in ("url", "sha256", "bytes", "caption")}
    if path.exists():  # only verified files are ever renamed to their final name
        return manifest.row(safe, path, captions=caps, meta=meta)
    part = path.with_name(path.name + ".part")
    path.parent.mkdir(parents=True, exist_ok=True)
    error = ""
    for attempt in range(retries + 1):
        try:
            if urlsplit(url).scheme in ("http", "https"):
                _http_download(url, part, timeout)
            else:
                _fsspec_download(url, part)
            got = part.stat().st_size
            if size is not None and got != size:
                raise ValueError(f"size mismatch: expected {size} bytes, got {got}")
            digest = manifest.sha256_file(part)
            if sha and digest != sha.lower():
                part.unlink()  # corrupt content: resuming from it would never succeed
                raise ValueError(f"sha256 mismatch: expected {sha[:12]}..., got {digest[:12]}...")
            part.replace(path)
            return manifest.row(safe, path, captions=caps, meta=meta, sha256=digest)
        except Exception as e:  # noqa: BLE001 - any failure is retried, then becomes an error row
            error = scrub(f"{type(e).__name__}: {e}", url)
            if attempt < retries:
                time.sleep(min(2**attempt * 0.2, 5))
    return manifest.row(safe, path, captions=caps, meta=meta, error=f"download failed: {error}")


def download_all(entries: list[dict], out_dir: Path, workers: int = 8, retries: int = 4,
                 timeout: float = 60) -> list[dict]:
    with ThreadPoolExecutor(max(1, workers)) as pool:
        rows = list(pool.map(lambda e: download(e, out_dir, retries, timeout), entries))
    for r in rows:
        if r["error"]:
            log.warning("%s: %s", r["source"], r["error"])
    return rows


def fetch(source: dict, out_dir: Path) -> list[dict]:
    return download_all(read_list(source), Path(out_dir), int(source.get("workers", 8)),
                        int(source.get("retries", 4)), float(source.get("timeout_s", 60)))
