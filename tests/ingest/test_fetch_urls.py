"""`urls` source against a real HTTP server on loopback: resume after a dropped connection, servers
without Range, files that changed under a partial download, checksum and size mismatches, retries,
list formats, secrets in URLs, and fsspec protocols."""

import hashlib
import json
import logging
from pathlib import Path

import fsspec
import numpy as np
import pytest
from httpserver import Server

from longvid.ingest import manifest
from longvid.ingest.fetch import fetch
from longvid.ingest.sources.download import redact
from longvid.io import InputError

N = 200_000


def blob(seed: int, n: int = N) -> bytes:
    return np.random.default_rng(seed).bytes(n)


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def by_name(rows):
    return {r["source"].split("?")[0].rsplit("/", 1)[1]: r for r in rows}


def visible(out):
    return sorted(p.name for p in out.iterdir() if not p.name.startswith("."))


def urls_source(entries, **kw):
    return {"type": "urls", "urls": entries, "retries": 3, "backoff_s": 0, "workers": 4, **kw}


def test_dropped_connection_resumes_with_range_and_if_range(tmp_path):
    a, b = blob(1), blob(2)
    with Server() as srv:
        srv.files = {"/a.mp4": a, "/b.mkv": b}
        srv.drop_once["/a.mp4"] = N // 3
        rows = fetch(urls_source([{"url": f"{srv.url}/a.mp4", "sha256": sha(a), "caption": "first"},
                                  {"url": f"{srv.url}/b.mkv", "bytes": N}]), tmp_path / "out")
        first, second = srv.hits("/a.mp4")
    got = by_name(rows)
    assert got["a.mp4"]["error"] == got["b.mkv"]["error"] == ""
    assert Path(got["a.mp4"]["path"]).read_bytes() == a and Path(got["b.mkv"]["path"]).read_bytes() == b
    assert got["b.mkv"]["path"].endswith(f"{got['b.mkv']['id']}.mkv")
    assert got["a.mp4"]["captions"] == [manifest.caption("first")]
    assert "Range" not in first["headers"]
    assert second["headers"]["Range"] == f"bytes={N // 3}-" and second["status"] == 206
    assert second["headers"]["If-Range"].startswith('"')  # guarded by the ETag of the first answer
    assert visible(tmp_path / "out") == sorted(f"{r['id']}{r['path'][-4:]}" for r in rows)
    assert not list((tmp_path / "out").glob(".*.part*"))


def test_server_without_range_restarts_from_zero(tmp_path):
    a = blob(3)
    with Server() as srv:
        srv.files, srv.no_range = {"/a.mp4": a}, {"/a.mp4"}
        srv.drop_once["/a.mp4"] = N // 2
        (row,) = fetch(urls_source([f"{srv.url}/a.mp4"]), tmp_path / "out")
        retry = srv.hits("/a.mp4")[1]
    assert retry["headers"].get("Range") == f"bytes={N // 2}-" and retry["status"] == 200
    assert row["error"] == "" and row["sha256"] == sha(a) and row["bytes"] == N


def test_a_server_that_compresses_anyway_is_decoded_and_restarted(tmp_path):
    a = bytes(range(256)) * 800  # compressible, so the gzip body is much shorter than the file
    with Server() as srv:
        srv.files, srv.gzip = {"/a.mp4": a}, {"/a.mp4"}
        srv.drop_once["/a.mp4"] = 100
        (row,) = fetch(urls_source([{"url": f"{srv.url}/a.mp4", "bytes": len(a)}]), tmp_path / "out")
        first, second = srv.hits("/a.mp4")
    assert first["headers"]["Accept-Encoding"] == "identity"
    assert "Range" not in second["headers"]  # decoded offsets are no Range offsets
    assert row["error"] == "" and Path(row["path"]).read_bytes() == a


def test_partial_from_a_killed_run_resumes_and_a_changed_file_restarts(tmp_path):
    old, new = blob(4), blob(5)
    out = tmp_path / "out"
    with Server() as srv:
        srv.files = {"/a.mp4": new}
        src = urls_source([f"{srv.url}/a.mp4"])
        part = out / f".{manifest.video_id(f'{srv.url}/a.mp4')}.mp4.part"
        out.mkdir()
        etag = '"' + hashlib.sha1(new).hexdigest() + '"'

        # a previous run got 1000 bytes of today's file before it was killed
        part.write_bytes(new[:1000])
        part.with_name(part.name + ".json").write_text(json.dumps({"validator": etag}))
        (row,) = fetch(src, out)
        (hit,) = srv.hits("/a.mp4")
        assert (hit["headers"]["Range"], hit["status"]) == ("bytes=1000-", 206)
        assert row["sha256"] == sha(new)

        # the partial is of an older version of the file (its ETag no longer matches): If-Range
        # makes the server send the whole new file instead of splicing old and new bytes
        (out / f"{row['id']}.mp4").unlink()
        part.write_bytes(old[:1000])
        part.with_name(part.name + ".json").write_text(json.dumps({"validator": '"stale"'}))
        (row,) = fetch(src, out)
        assert srv.hits("/a.mp4")[-1]["status"] == 200
        assert row["sha256"] == sha(new)

        # no validator was kept, but the list knows the checksum: the spliced file fails it and
        # one clean download follows
        (out / f"{row['id']}.mp4").unlink()
        part.write_bytes(old[:1000])
        src["urls"] = [{"url": f"{srv.url}/a.mp4", "sha256": sha(new)}]
        n = len(srv.log)
        (row,) = fetch(src, out)
        assert [h["status"] for h in srv.log[n:]] == [206, 200]
        assert row["error"] == "" and row["sha256"] == sha(new)


def test_mismatches_and_http_errors_become_error_rows(tmp_path):
    good = blob(6)
    with Server() as srv:
        srv.files = {"/good.mp4": good, "/wrong.mp4": blob(7), "/short.mp4": good[:-10], "/busy.mp4": good}
        srv.fail_next["/busy.mp4"] = [(503, {"Retry-After": "0"}), (429, {"Retry-After": "0"})]
        srv.fail_next["/flaky.mp4"] = [(500, {})] * 10
        rows = fetch(urls_source([
            {"url": f"{srv.url}/good.mp4", "sha256": sha(good)},
            {"url": f"{srv.url}/wrong.mp4", "sha256": sha(good)},  # the server has other bytes
            {"url": f"{srv.url}/short.mp4", "bytes": N},
            {"url": f"{srv.url}/busy.mp4"},
            {"url": f"{srv.url}/gone.mp4"},
            {"url": f"{srv.url}/flaky.mp4"},
        ]), tmp_path / "out")
        calls = {p: len(srv.hits(p)) for p in ("/wrong.mp4", "/busy.mp4", "/gone.mp4", "/flaky.mp4")}
    got = by_name(rows)
    assert got["good.mp4"]["error"] == "" and got["busy.mp4"]["sha256"] == sha(good)
    assert f"sha256 mismatch: expected {sha(good)}" in got["wrong.mp4"]["error"]
    assert f"size mismatch: expected {N} bytes, got {N - 10}" in got["short.mp4"]["error"]
    assert "HTTP 404" in got["gone.mp4"]["error"] and "HTTP 500" in got["flaky.mp4"]["error"]
    assert calls == {"/wrong.mp4": 1, "/busy.mp4": 3, "/gone.mp4": 1, "/flaky.mp4": 4}  # 4 = 1 + retries
    for r in rows:
        assert "\n" not in r["error"]
        if r["error"]:
            assert (r["bytes"], r["sha256"]) == (0, "")
    assert len(visible(tmp_path / "out")) == 2  # only verified files get their final name
    assert not list((tmp_path / "out").glob(".*.part"))


def test_rerun_downloads_nothing_unless_the_list_changed(tmp_path):
    a, b = blob(8), blob(9)
    with Server() as srv:
        srv.files = {"/a.mp4": a, "/b.mp4": b}
        src = urls_source([{"url": f"{srv.url}/a.mp4", "sha256": sha(a)}, f"{srv.url}/b.mp4"])
        first = fetch(src, tmp_path / "out")
        n = len(srv.log)
        assert fetch(src, tmp_path / "out") == first
        assert len(srv.log) == n
        srv.files["/a.mp4"] = b  # the list now expects other content for a.mp4
        src["urls"][0]["sha256"] = sha(b)
        again = fetch(src, tmp_path / "out")
        assert [h["path"] for h in srv.log[n:]] == ["/a.mp4"]
        assert again[0]["sha256"] == sha(b) and again[0]["id"] == first[0]["id"]


def test_list_files_in_every_format(tmp_path):
    a, b, c = blob(10), blob(11), blob(12)
    with Server() as srv:
        srv.files = {"/a.mp4": a, "/b.mp4": b, "/c.webm": c}
        (tmp_path / "l.txt").write_text(f"# comment\n{srv.url}/a.mp4\n\n{srv.url}/b.mp4\n{srv.url}/a.mp4\n")
        (tmp_path / "l.csv").write_text(f'url,sha256,bytes,caption,license\n{srv.url}/a.mp4,{sha(a)},{N},'
                                        f'"a dog, running",cc0\n{srv.url}/c.webm,,,,\n')
        (tmp_path / "l.jsonl").write_text(json.dumps({"url": f"{srv.url}/b.mp4", "captions": [
            "whole video", {"text": "second half", "start": 5.0, "end": 10.0}], "meta": {"k": 1}}) + "\n")
        txt = fetch({"type": "urls", "list": str(tmp_path / "l.txt")}, tmp_path / "o1")
        assert [r["source"] for r in txt] == [f"{srv.url}/a.mp4", f"{srv.url}/b.mp4"]  # duplicates once
        csv_rows = fetch({"type": "urls", "list": str(tmp_path / "l.csv")}, tmp_path / "o2")
        assert csv_rows[0]["captions"][0]["text"] == "a dog, running"
        assert csv_rows[0]["meta"] == {"license": "cc0"} and csv_rows[1]["sha256"] == sha(c)
        (row,) = fetch({"type": "urls", "list": str(tmp_path / "l.jsonl")}, tmp_path / "o3")
        assert row["captions"] == [manifest.caption("whole video"), manifest.caption("second half", 5.0, 10.0)]
        assert row["meta"] == {"k": 1}

    bad = {"l1.csv": ("link\nhttp://x/a.mp4\n", r"l1.csv: the header has no `url` column"),
           "l2.csv": ("url,sha256\nhttp://x/a.mp4,abc\n", r"l2.csv:2: sha256 must be 64 hex digits"),
           "l3.jsonl": ('{"url": "http://x/a.mp4"}\n{"url": \n', r"l3.jsonl:2: not valid JSON"),
           "l4.txt": ("http://x/a.mp4\nnot a url\n", r"l4.txt:2: not a URL"),
           "l5.jsonl": ('{"url": "http://x/a.mp4", "bytes": "many"}\n', r"l5.jsonl:1: bytes must be an integer")}
    for name, (text, err) in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(InputError, match=err):
            fetch({"type": "urls", "list": str(tmp_path / name)}, tmp_path / "bad")
    with pytest.raises(InputError, match=r"source\.list: no such file"):
        fetch({"type": "urls", "list": str(tmp_path / "nope.txt")}, tmp_path / "bad")
    with pytest.raises(InputError, match=r"source\.list: required"):
        fetch({"type": "urls"}, tmp_path / "bad")


def test_secrets_in_urls_reach_no_file_or_log(tmp_path, caplog):
    a = blob(13)
    with Server() as srv:
        srv.files = {"/a.mp4": a}
        host = srv.url.split("//")[1]
        signed = f"http://alice:hunter2@{host}/a.mp4?id=7&X-Amz-Signature=s3cr3t-sig&token=tok-123"
        missing = f"http://{host}/gone.mp4?api_key=k3y-456"
        with caplog.at_level(logging.DEBUG):
            rows = fetch(urls_source([signed, missing]), tmp_path / "out")
    assert rows[0]["error"] == "" and rows[0]["sha256"] == sha(a)
    assert rows[0]["source"] == f"http://{host}/a.mp4?id=7&X-Amz-Signature=REDACTED&token=REDACTED"
    # a re-signed URL is the same video (same id, same file); another `id` is another video
    assert redact(signed.replace("s3cr3t-sig", "other")) == rows[0]["source"]
    assert redact(signed.replace("id=7", "id=8")) != rows[0]["source"]
    assert redact("http://u:p@[::1]:8080/a.mp4?sig=x") == "http://[::1]:8080/a.mp4?sig=REDACTED"
    assert "HTTP 404" in rows[1]["error"]
    stored = json.dumps(rows) + caplog.text + "".join(
        p.name + p.read_bytes().decode("latin-1") for p in (tmp_path / "out").iterdir())
    for secret in ("hunter2", "alice", "s3cr3t-sig", "tok-123", "k3y-456"):
        assert secret not in stored


def test_fsspec_protocols_resume_and_missing_backends_fail_early(tmp_path):
    data = blob(14)
    mem = fsspec.filesystem("memory")
    mem.pipe("/bucket/clip.mp4", data)
    url = "memory://bucket/clip.mp4"
    out = tmp_path / "out"
    out.mkdir()
    part = out / f".{manifest.video_id(redact(url))}.mp4.part"
    # A partial whose bytes differ from the object's shows that the download seeks past it ...
    part.write_bytes(bytes(12345))
    (row,) = fetch(urls_source([url]), out)
    assert Path(row["path"]).read_bytes() == bytes(12345) + data[12345:]
    # ... which is why a known checksum matters: the spliced file fails it and is downloaded again.
    (out / row["path"]).unlink()
    part.write_bytes(bytes(12345))
    (row,) = fetch(urls_source([{"url": url, "sha256": sha(data)}]), out)
    assert row["error"] == "" and Path(row["path"]).read_bytes() == data

    (missing,) = fetch(urls_source(["memory://bucket/none.mp4"]), out)
    assert "no such object" in missing["error"]

    with Server() as srv:  # s3fs is an optional extra: no download starts without it
        srv.files = {"/a.mp4": data}
        with pytest.raises(InputError, match=r"s3:// URLs need an fsspec backend.*s3fs"):
            fetch(urls_source([f"{srv.url}/a.mp4", "s3://bucket/a.mp4"]), tmp_path / "o2")
        assert srv.log == []
    with pytest.raises(InputError, match=r"unsupported URL protocol nope://"):
        fetch(urls_source(["nope://x/a.mp4"]), tmp_path / "o3")
