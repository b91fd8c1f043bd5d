"""`pixabay` source: list videos through the Pixabay API, then download them as `urls`.

Config: type: pixabay, query, per_page (3-200, default 200), max_videos, quality
(large|medium|small|tiny, default large; falls back to the next smaller one that exists),
api_url (default https://pixabay.com/api/videos/; a test points it at a loopback server), plus the
`urls` download keys (workers, retries, timeout_s).
The API key is read from $PIXABAY_API_KEY and only ever sent to the API: error messages and the
manifest carry URLs with their query string removed. Captions are the video's tags.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from longvid.ingest.sources.urls import download_all, scrub
from longvid.io import InputError

log = logging.getLogger(__name__)
API_URL = "https://pixabay.com/api/videos/"
QUALITIES = ("large", "medium", "small", "tiny")


def list_videos(source: dict, key: str) -> list[dict]:
    import requests

    api, per_page = source.get("api_url", API_URL), int(source.get("per_page", 200))
    limit, quality = int(source.get("max_videos", 100)), source.get("quality", "large")
    if quality not in QUALITIES:
        raise InputError(f"source.quality: {quality!r} is not one of {', '.join(QUALITIES)}")
    entries, page = [], 1
    while len(entries) < limit:
        params = {"key": key, "q": source.get("query", ""), "per_page": per_page, "page": page}
        try:
            r = requests.get(api, params=params, timeout=float(source.get("timeout_s", 60)))
            r.raise_for_status()
            hits = r.json().get("hits", [])
        except Exception as e:  # noqa: BLE001 - report without ever echoing the key
            raise RuntimeError(scrub(f"pixabay listing failed (page {page}): {type(e).__name__}: {e}",
                                     f"{api}?key={key}").replace(key, "<redacted>")) from None
        for hit in hits:
            files = hit.get("videos", {})
            choice = next((files[q] for q in QUALITIES[QUALITIES.index(quality):] if files.get(q, {}).get("url")),
                          None)
            if choice is None:
                continue
            entries.append({"url": choice["url"], "bytes": choice.get("size") or None, "caption": hit.get("tags", ""),
                            "pixabay_id": hit.get("id"), "page_url": hit.get("pageURL")})
        if len(hits) < per_page:
            break
        page += 1
    return entries[:limit]


def fetch(source: dict, out_dir: Path) -> list[dict]:
    key = os.environ.get("PIXABAY_API_KEY", "")
    if not key:
        raise InputError("source.type=pixabay: set PIXABAY_API_KEY in the environment (never in a config file)")
    entries = list_videos(source, key)
    log.info("pixabay: %d videos listed for %r", len(entries), source.get("query", ""))
    return download_all(entries, Path(out_dir), int(source.get("workers", 8)), int(source.get("retries", 4)),
                        float(source.get("timeout_s", 60)))
