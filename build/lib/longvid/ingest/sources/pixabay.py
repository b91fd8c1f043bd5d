"""`pixabay` source: list videos through the Pixabay API, then download them like `urls`.

Config keys (the dataset's `source` section; defaults and ranges live in
longvid/schemas/dataset.schema.yaml):

    type: pixabay
    query: nature            a search term, or a list of them (listed in turn, duplicates dropped)
    max_videos: 100          videos in all (queries together)
    per_page: 200            3..200 results per API page
    quality: large           large | medium | small | tiny; a video without it gets the next smaller
    video_type, category, order, min_width, min_height, safesearch, editors_choice, lang
                             passed to the API as given (see pixabay.com/api/docs)
    api_url: https://pixabay.com/api/videos/      overridable (tests point it at a loopback server)
    api_key_env: PIXABAY_API_KEY                  the environment variable that holds the key
    refresh: false           true: list again although a listing for these settings is cached
    workers, retries, timeout_s, backoff_s        the `urls` download keys (also used for the API)

Captions are the video's tags; `meta` keeps the Pixabay id, page URL, duration, size and user.
The listing is cached in `<out_dir>/pixabay-listing.json` with the settings that produced it, so a
rerun downloads the same videos instead of whatever is popular today, and needs no key (Pixabay also
asks API users to cache results). The API returns at most 500 hits per query and allows 100
requests a minute: a 429 waits for Retry-After / X-RateLimit-Reset and tries again.

The key is read from the environment and only ever sent to the API: it is masked in every error and
log message, never written to the listing cache or the manifest.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from urllib.parse import quote

from longvid import config as lvconfig
from longvid.ingest.sources.download import download_all, secrets_of
from longvid.ingest.sources.urls import download_options, normalise
from longvid.io import InputError, write_json

log = logging.getLogger(__name__)

QUALITIES = ("large", "medium", "small", "tiny")
API_FILTERS = ("video_type", "category", "order", "min_width", "min_height", "safesearch",
               "editors_choice", "lang")
LISTING = "pixabay-listing.json"


class Hidden:
    """Masks one secret (and its URL-encoded form) in any text that may reach a user."""

    def __init__(self, secret: str):
        self.forms = sorted({secret, quote(secret, safe="")} - {""}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for form in self.forms:
            text = text.replace(form, "REDACTED")
        return " ".join(text.split())


def settings_of(source: dict) -> dict:
    """The keys that decide which videos are listed (not how they are downloaded); their ranges
    (per_page 3..200, queries of at most 100 characters, ...) are the schema's to check."""
    queries = source["query"]
    queries = [queries] if isinstance(queries, str) else list(queries)
    return {"queries": queries, "per_page": source["per_page"], "max_videos": source["max_videos"],
            "quality": source["quality"], "api_url": source["api_url"],
            "filters": {k: source[k] for k in API_FILTERS if k in source}}


def api_get(session, url: str, params: dict, hide: Hidden, source: dict) -> dict:
    """One listing page, retried on network errors, 5xx and 429; InputError when the API rejects
    the request (400/401/403: a bad key or bad settings)."""
    retries, backoff = source["retries"], float(source["backoff_s"])
    for attempt in range(retries + 1):
        wait, error = backoff * 2 ** attempt, ""
        try:
            r = session.get(url, params=params, timeout=float(source["timeout_s"]))
        except Exception as e:  # noqa: BLE001 - requests' messages carry the URL (and so the key)
            error = hide(f"{type(e).__name__}: {e}")
        else:
            if r.status_code == 200:
                try:
                    return r.json()
                except ValueError:
                    raise RuntimeError(f"pixabay: the API at {url} answered with no JSON") from None
            said = hide(r.text[:200])
            if r.status_code in (400, 401, 403):
                raise InputError(f"source: Pixabay rejected the request (HTTP {r.status_code}: {said})")
            error = f"HTTP {r.status_code}: {said}"
            if r.status_code < 500 and r.status_code != 429:
                raise RuntimeError(f"pixabay: listing {url} failed ({error})")
            for header in ("Retry-After", "X-RateLimit-Reset"):
                if r.headers.get(header, "").replace(".", "", 1).isdigit():
                    wait = float(r.headers[header])
                    break
        if attempt < retries:
            time.sleep(min(wait, 120.0))
    raise RuntimeError(f"pixabay: listing {url} failed after {retries + 1} attempts ({error})")


def entry_of(hit: dict, quality: str) -> dict | None:
    files = hit.get("videos") or {}
    for q in QUALITIES[QUALITIES.index(quality):]:
        f = files.get(q) or {}
        if f.get("url"):
            meta = {"pixabay_id": hit.get("id"), "page_url": hit.get("pageURL"), "quality": q,
                    "duration": hit.get("duration"), "width": f.get("width"), "height": f.get("height"),
                    "listed_bytes": f.get("size"), "user": hit.get("user")}
            return {"url": f["url"], "caption": hit.get("tags", ""),
                    "meta": {k: v for k, v in meta.items() if v not in (None, "")}}
    return None


def list_videos(settings: dict, key: str, source: dict) -> list[dict]:
    import requests

    hide, session = Hidden(key), requests.Session()
    entries: list[dict] = []
    seen: set = set()
    for q in settings["queries"]:
        page, listed = 1, 0
        while len(entries) < settings["max_videos"]:
            params = {"key": key, "q": q, "per_page": settings["per_page"], "page": page,
                      **settings["filters"]}
            data = api_get(session, settings["api_url"], params, hide, source)
            hits = data.get("hits") or []
            for hit in hits:
                e = entry_of(hit, settings["quality"])
                if e is not None and hit.get("id") not in seen:
                    seen.add(hit.get("id"))
                    entries.append(e)
            listed += len(hits)
            # the API serves at most totalHits (<= 500) per query; asking past that is an error
            if len(hits) < settings["per_page"] or listed >= int(data.get("totalHits") or 0):
                break
            page += 1
    return entries[: settings["max_videos"]]


def listing(source: dict, out_dir: Path) -> list[dict]:
    """Cached listing for these settings, or a fresh one (which is then cached when it is safe)."""
    settings = settings_of(source)
    cache = Path(out_dir) / LISTING
    if cache.is_file() and not source["refresh"]:
        try:
            cached = json.loads(cache.read_text())
        except ValueError:
            cached = {}  # edited by hand into something else: list again
        if cached.get("settings") == settings and isinstance(cached.get("videos"), list):
            log.info("pixabay: %d videos from the cached listing %s", len(cached["videos"]), cache)
            return cached["videos"]
    env = source["api_key_env"]
    key = os.environ.get(env, "")
    if not key:
        raise InputError(f"source: set {env} in the environment to list Pixabay videos "
                         "(the key never goes in a config file)")
    entries = list_videos(settings, key, source)
    hide = Hidden(key)
    # a listing that carries a secret (a signed URL, or the key itself) is not written to disk
    if not any(secrets_of(e["url"]) or hide(e["url"]) != e["url"] for e in entries):
        write_json(cache, {"settings": settings, "videos": entries})
    log.info("pixabay: %d videos listed for %s", len(entries), settings["queries"])
    return entries


def fetch(source: dict, out_dir: Path) -> list[dict]:
    source = lvconfig.source(source)
    entries = []
    for e in listing(source, Path(out_dir)):
        try:
            entries.append(normalise(e, f"pixabay video {e['meta'].get('pixabay_id')}"))
        except InputError as err:  # one odd hit does not stop the others
            log.warning("%s", err)
    return download_all(entries, Path(out_dir), **download_options(source))
