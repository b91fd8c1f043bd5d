"""`pixabay` source against a loopback server speaking the Pixabay API's JSON: paged listing, quality
fallback, the listing cache, retries, and the API key never reaching a file, a row or a log."""

import hashlib
import json
import logging
import socket

import numpy as np
import pytest
from httpserver import Server

from longvid.ingest.fetch import fetch
from longvid.io import InputError

KEY = "12345678-0a1b2c3d4e5f60718293a4b5c"


def blob(seed: int) -> bytes:
    return np.random.default_rng(seed).bytes(30_000)


def fake_api(srv: Server, hits_by_query: dict[str, list[dict]]):
    """Pages of hits the way the API serves them (totalHits, page/per_page), refusing bad keys."""

    def api(query):
        if query.get("key") != [KEY]:
            return 400, f"[ERROR 400] Invalid API key: {query.get('key')}"  # echoes the key back
        hits = hits_by_query.get(query["q"][0], [])
        page, per_page = int(query["page"][0]), int(query["per_page"][0])
        if (page - 1) * per_page >= max(len(hits), 1):
            return 400, '[ERROR 400] "page" is out of valid range.'
        return {"total": len(hits), "totalHits": len(hits), "hits": hits[(page - 1) * per_page: page * per_page]}

    srv.api["/api/videos/"] = api


def hit(srv: Server, i: int, qualities=("large", "medium")) -> dict:
    return {"id": i, "pageURL": f"https://pixabay.com/videos/v-{i}/", "tags": f"tag{i}, nature", "duration": 12,
            "user": "someone", "videos": {q: {"url": f"{srv.url}/{q}/{i}.mp4", "width": 1920, "height": 1080,
                                              "size": 30_000} if q in qualities else
                                          {"url": "", "width": 0, "height": 0, "size": 0}
                                          for q in ("large", "medium", "small", "tiny")}}


def no_key_anywhere(rows, caplog, out) -> None:
    stored = json.dumps(rows) + caplog.text + "".join(
        p.name + p.read_bytes().decode("latin-1") for p in out.rglob("*") if p.is_file())
    assert KEY not in stored


def test_listing_pages_quality_fallback_and_cache(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PIXABAY_API_KEY", KEY)
    out = tmp_path / "out"
    with Server() as srv:
        nature = [hit(srv, i) for i in range(5)] + [hit(srv, 5, qualities=("medium", "tiny"))]
        fake_api(srv, {"nature": nature, "forest": [hit(srv, 2), hit(srv, 7)]})
        for i in range(8):
            srv.files[f"/large/{i}.mp4"] = srv.files[f"/medium/{i}.mp4"] = blob(i)
        src = {"type": "pixabay", "query": ["nature", "forest"], "per_page": 4, "max_videos": 7,
               "order": "latest", "video_type": "film", "api_url": f"{srv.url}/api/videos/", "backoff_s": 0}
        with caplog.at_level(logging.DEBUG):
            rows = fetch(src, out)
        calls = [e for e in srv.log if e["path"] == "/api/videos/"]
        assert [(c["query"].count("page=1"), "order=latest" in c["query"], "video_type=film" in c["query"])
                for c in calls] == [(1, True, True), (0, True, True), (1, True, True)]

        # ids 0-5 from "nature" (two pages of 4), then 7 from "forest" (2 was already listed)
        assert [r["meta"]["pixabay_id"] for r in rows] == [0, 1, 2, 3, 4, 5, 7]
        assert [r["meta"]["quality"] for r in rows] == ["large"] * 5 + ["medium", "large"]
        assert rows[5]["source"] == f"{srv.url}/medium/5.mp4"
        assert rows[0]["captions"][0]["text"] == "tag0, nature"
        assert rows[0]["meta"]["page_url"] == "https://pixabay.com/videos/v-0/"
        assert all(not r["error"] and r["sha256"] == hashlib.sha256(blob(r["meta"]["pixabay_id"])).hexdigest()
                   for r in rows)
        no_key_anywhere(rows, caplog, out)

        # Same settings, no key: the cached listing is downloaded again (nothing new: no requests).
        monkeypatch.delenv("PIXABAY_API_KEY")
        n = len(srv.log)
        assert fetch({**src, "workers": 2}, out) == rows
        assert len(srv.log) == n
        # Other settings need a new listing, and so the key.
        with pytest.raises(InputError, match="PIXABAY_API_KEY"):
            fetch({**src, "max_videos": 3}, out)
        monkeypatch.setenv("MY_PIXABAY", KEY)
        assert len(fetch({**src, "max_videos": 3, "api_key_env": "MY_PIXABAY"}, out)) == 3


def test_the_key_stays_secret_when_things_go_wrong(tmp_path, monkeypatch, caplog):
    out = tmp_path / "out"
    monkeypatch.setenv("PIXABAY_API_KEY", KEY)
    with Server() as srv, caplog.at_level(logging.DEBUG):
        src = {"type": "pixabay", "query": "cats", "api_url": f"{srv.url}/api/videos/", "backoff_s": 0,
               "retries": 2}
        fake_api(srv, {"cats": [hit(srv, 1)]})
        srv.files["/large/1.mp4"] = blob(1)
        srv.fail_next["/api/videos/"] = [(429, {"Retry-After": "0"}), (503, {"X-RateLimit-Reset": "0"})]
        (row,) = fetch(src, out)  # rate limited, then the server hiccups, then it answers
        assert not row["error"] and len(srv.hits("/api/videos/")) == 3

        monkeypatch.setenv("PIXABAY_API_KEY", "wrong-" + KEY)  # the API echoes a rejected key back
        with pytest.raises(InputError, match=r"Pixabay rejected the request \(HTTP 400") as rejected:
            fetch({**src, "refresh": True}, out)
        assert "wrong-" not in str(rejected.value) and KEY not in str(rejected.value)

        srv.fail_next["/api/videos/"] = [(500, {})] * 3
        monkeypatch.setenv("PIXABAY_API_KEY", KEY)
        with pytest.raises(RuntimeError, match="failed after 3 attempts") as down:
            fetch({**src, "refresh": True}, out)
        assert KEY not in str(down.value)

        # a signed download URL (the key in it) is never written to the listing cache
        srv.api["/api/videos/"] = {"totalHits": 1, "hits": [
            {**hit(srv, 1), "videos": {"large": {"url": f"{srv.url}/large/1.mp4?token={KEY}"}}}]}
        (row,) = fetch({**src, "refresh": True}, tmp_path / "signed")
        assert not row["error"] and not (tmp_path / "signed/pixabay-listing.json").exists()

    with socket.socket() as s:  # a port nobody listens on: requests' error text holds the whole URL
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/api/videos/"
    with caplog.at_level(logging.DEBUG), pytest.raises(RuntimeError, match="ConnectionError") as refused:
        fetch({**src, "api_url": closed, "retries": 0, "refresh": True}, out)
    assert KEY not in str(refused.value)
    no_key_anywhere([row], caplog, tmp_path)


def test_bad_settings_are_input_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("PIXABAY_API_KEY", raising=False)
    with pytest.raises(InputError, match=r"set PIXABAY_API_KEY in the environment"):
        fetch({"type": "pixabay", "query": "x"}, tmp_path)
    monkeypatch.setenv("PIXABAY_API_KEY", KEY)
    for bad, err in [({"quality": "huge"}, r"source\.quality"), ({"per_page": 500}, r"source\.per_page"),
                     ({"max_videos": 0}, r"source\.max_videos"), ({"query": "x" * 101}, r"source\.query")]:
        with pytest.raises(InputError, match=err):
            fetch({"type": "pixabay", "query": "x", **bad}, tmp_path)
