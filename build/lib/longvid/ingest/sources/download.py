"""The download engine behind the `urls` source (and `pixabay`, `annotations` with a URL root).

One video at a time per worker thread: into `.<id><ext>.part`, resumed with an HTTP Range request
guarded by If-Range (the server's ETag or Last-Modified, kept in `.<id><ext>.part.json`, so a file
that changed on the server restarts instead of being spliced) or with a seek for fsspec protocols;
checked against the listed size and sha256; renamed into place. A server that ignores Range gets a
full restart; a checksum mismatch after a resumed download gets one clean attempt more; 4xx answers
other than 408/425/429 are not retried. Every failure becomes an error row.

URLs can carry secrets (API keys, pre-signed signatures, user:password@): what is stored or logged is
`redact(url)` — credentials dropped, secret-looking query values masked.
"""
from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from tqdm import tqdm

from longvid.ingest import manifest
from longvid.ingest.sources.checksums import ChecksumCache
from longvid.ingest.sources.local import VIDEO_EXTENSIONS
from longvid.io import InputError, one_line, sha256_file

log = logging.getLogger(__name__)
# urllib3 logs every request line, query string included, at DEBUG: with `longvid -v` that would put
# API keys (Pixabay's is a query parameter) into job logs.
logging.getLogger("urllib3").setLevel(logging.INFO)

CHUNK = 1 << 20
SECRET_PARAM = re.compile(r"key|token|sig|secret|passw|credential|auth|session", re.IGNORECASE)
RETRYABLE_4XX = {408, 425, 429}


class Permanent(Exception):
    """A failure another attempt cannot fix (404, 403, ...)."""


class Mismatch(Permanent):
    """The downloaded bytes are not the listed ones (size or sha256)."""


class Retry(Exception):
    def __init__(self, msg: str, wait: float | None = None):
        super().__init__(msg)
        self.wait = wait


def redact(url: str) -> str:
    """The URL without user:password and with secret-looking query values masked: safe to log and
    to store. Other query parameters stay, so distinct files keep distinct ids."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(SECRET_PARAM.search(k) for k, _ in pairs):
        query = urlencode([(k, "REDACTED" if SECRET_PARAM.search(k) else v) for k, v in pairs])
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def secrets_of(url: str) -> list[str]:
    parts = urlsplit(url)
    found = [v for k, v in parse_qsl(parts.query) if SECRET_PARAM.search(k) and v]
    return found + [s for s in (parts.password, parts.username) if s]


def scrub(message: str, url: str) -> str:
    """One line, with the URL redacted and its secret values masked wherever they appear."""
    message = message.replace(url, redact(url))
    for s in sorted(secrets_of(url), key=len, reverse=True):
        message = message.replace(s, "REDACTED")
    return " ".join(message.split())


def check_backends(entries: list[dict]) -> None:
    """Fail before downloading anything when a protocol's fsspec backend is not installed."""
    import fsspec

    for proto in sorted({urlsplit(e["url"]).scheme.lower() for e in entries} - {"http", "https"}):
        try:
            fsspec.get_filesystem_class(proto)
        except ImportError as e:
            raise InputError(f"source: {proto}:// URLs need an fsspec backend: {e} "
                             "(pip install 'longvid[cloud]')") from None
        except ValueError:
            raise InputError(f"source: unsupported URL protocol {proto}://") from None


@dataclass
class Options:
    out_dir: Path
    retries: int = 4
    timeout: float = 60.0
    backoff: float = 1.0
    storage_options: dict = field(default_factory=dict)
    cache: ChecksumCache | None = None
    local: threading.local = field(default_factory=threading.local)

    def session(self):
        import requests

        if not hasattr(self.local, "session"):  # one keep-alive session per download thread
            self.local.session = requests.Session()
        return self.local.session


def target_path(out_dir: Path, entry: dict) -> Path:
    ext = PurePosixPath(urlsplit(entry["url"]).path).suffix.lower()
    ext = ext if ext in VIDEO_EXTENSIONS else ".mp4"
    return Path(out_dir) / f"{manifest.video_id(entry['source'])}{ext}"


def _retry_after(headers) -> float | None:
    try:
        return float(headers.get("Retry-After"))
    except (TypeError, ValueError):
        return None


def _http_transfer(url: str, part: Path, opt: Options) -> None:
    """Bring `part` up to the whole file, resuming from what it holds when it can."""
    state = part.with_name(part.name + ".json")
    have = part.stat().st_size if part.exists() else 0
    try:
        saved = json.loads(state.read_text()) if have else {}
    except (OSError, ValueError):
        saved = {}  # no (or a torn) state file: resume unguarded; a known sha256 still checks
    if saved.get("encoded"):
        have = 0  # offsets into a decoded stream are no Range offsets: start over
    # identity: byte offsets of a Range resume must be offsets in the file, not in a gzip stream
    headers = {"Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
        if saved.get("validator"):
            headers["If-Range"] = saved["validator"]
    with opt.session().get(url, headers=headers, stream=True, timeout=opt.timeout) as r:
        code = r.status_code
        encoded = r.headers.get("Content-Encoding", "identity").lower() not in ("", "identity")
        if code == 416 and have:  # nothing after `have`: complete, unless the file is now shorter
            total = r.headers.get("Content-Range", "").rpartition("/")[2]
            if total.isdigit() and int(total) == have:
                return
            part.unlink()
            raise Retry("the partial file is longer than the file on the server; restarting")
        if code >= 400:
            msg = f"HTTP {code} {r.reason or ''}".strip()
            if code < 500 and code not in RETRYABLE_4XX:
                raise Permanent(msg)
            raise Retry(msg, _retry_after(r.headers))
        if code == 206:
            m = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", r.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != have or encoded:
                part.unlink()
                raise Retry(f"server answered Range bytes={have}- with {r.headers.get('Content-Range')!r}")
            total = int(m.group(3)) if m.group(3) != "*" else None
            mode = "ab"
        else:  # 200: a fresh start (first try, a server without Range, or the file changed)
            length = r.headers.get("Content-Length", "")
            total = int(length) if length.isdigit() and not encoded else None
            etag = r.headers.get("ETag", "")
            validator = etag if etag and not etag.startswith("W/") else r.headers.get("Last-Modified")
            state.write_text(json.dumps({"validator": validator, "encoded": encoded}))
            mode = "wb"
        with open(part, mode) as f:
            # read1 hands over whatever has arrived, so the bytes received before a dropped
            # connection reach the partial file and the retry resumes after them. A server that
            # compressed anyway is decoded (and that download restarts rather than resumes).
            while block := r.raw.read1(CHUNK, decode_content=encoded):
                f.write(block)
    got = part.stat().st_size
    if total is not None and got != total:
        raise Retry(f"connection closed after {got} of {total} bytes")


def _fsspec_transfer(url: str, part: Path, opt: Options) -> None:
    import fsspec

    fs, path = fsspec.core.url_to_fs(url, **opt.storage_options)
    try:
        total = fs.size(path)
    except FileNotFoundError:
        raise Permanent("no such object") from None
    except PermissionError:
        raise Permanent("access denied") from None
    have = part.stat().st_size if part.exists() else 0
    have = have if total is None or have <= total else 0
    with fs.open(path, "rb") as src, open(part, "ab" if have else "wb") as dst:
        if have:
            src.seek(have)
        while block := src.read(CHUNK):
            dst.write(block)
    got = part.stat().st_size
    if total is not None and got != total:
        raise Retry(f"read {got} of {total} bytes")


def _verify(part: Path, entry: dict) -> str:
    got = part.stat().st_size
    if entry["bytes"] is not None and got != entry["bytes"]:
        raise Mismatch(f"size mismatch: expected {entry['bytes']} bytes, got {got}")
    digest = sha256_file(part)
    if entry["sha256"] and digest != entry["sha256"]:
        raise Mismatch(f"sha256 mismatch: expected {entry['sha256']}, got {digest}")
    return digest


def download(entry: dict, opt: Options) -> dict:
    url, path = entry["url"], target_path(opt.out_dir, entry)

    def row(**kw):
        return manifest.row(entry["source"], path, captions=entry["captions"], meta=entry["meta"], **kw)

    if path.is_file():  # only verified files are ever renamed to their final name
        digest = opt.cache.sha256(path)
        if entry["sha256"] in (None, digest) and entry["bytes"] in (None, path.stat().st_size):
            return row(sha256=digest)
        path.unlink()  # the list now names other content: fetch it again
    part = path.with_name(f".{path.name}.part")
    transfer = _http_transfer if urlsplit(url).scheme.lower() in ("http", "https") else _fsspec_transfer
    attempt, restarted = 0, False
    while True:
        resumed = part.exists() and part.stat().st_size > 0
        try:
            transfer(url, part, opt)
            digest = _verify(part, entry)
            os.replace(part, path)
            part.with_name(part.name + ".json").unlink(missing_ok=True)
            opt.cache.put(path, digest)
            return row(sha256=digest)
        except Mismatch as e:
            error = str(e)
            part.unlink(missing_ok=True)  # wrong content: resuming from it would never succeed
            if not resumed or restarted:
                break
            restarted = True  # the resumed part may have held stale bytes: one clean attempt more
        except Permanent as e:
            error = str(e)
            break
        except Exception as e:  # noqa: BLE001 - network faults of every kind are retried
            error = str(e) if isinstance(e, Retry) else one_line(e)
            if attempt >= opt.retries:
                break
            wait = getattr(e, "wait", None)
            time.sleep(min(60.0, wait if wait is not None else opt.backoff * 2 ** attempt))
            attempt += 1
    return row(error=scrub(f"download failed: {error}", url))


def download_all(entries: list[dict], out_dir: Path, workers: int = 8, retries: int = 4,
                 timeout: float = 60, backoff: float = 1.0,
                 storage_options: dict | None = None) -> list[dict]:
    """Manifest rows for entries normalised by `urls.normalise`, in their order."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_backends(entries)
    opt = Options(out_dir, int(retries), float(timeout), float(backoff), dict(storage_options or {}),
                  ChecksumCache(out_dir))
    with ThreadPoolExecutor(max(1, int(workers))) as pool:
        rows = list(tqdm(pool.map(lambda e: download(e, opt), entries), total=len(entries),
                         desc="fetch", unit="video", disable=None))
    # each failure is logged once, by `longvid fetch`, from the manifest rows
    log.info("downloaded %d videos into %s (%d failed)", len(rows), out_dir,
             sum(bool(r["error"]) for r in rows))
    return rows
