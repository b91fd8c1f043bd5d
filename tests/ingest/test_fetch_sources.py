"""fetch sources against real files and a real HTTP server on loopback."""

import hashlib
import json
import logging

import numpy as np
import pytest

from httpserver import Server
from longvid.ingest import manifest, synthetic
from longvid.ingest.fetch import fetch
from longvid.io import InputError


@pytest.fixture(scope="module")
def video_bytes(tmp_path_factory):
    d = tmp_path_factory.mktemp("v")
    shots = synthetic.plan_video(np.random.default_rng(0), 1, (2.0, 2.0), 24)
    synthetic.render_video(d / "a.mp4", shots, 24, 64, 96)
    return (d / "a.mp4").read_bytes()


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def test_local_folder_with_caption_sidecars(tmp_path, video_bytes):
    (tmp_path / "in/sub").mkdir(parents=True)
    (tmp_path / "in/one.mp4").write_bytes(video_bytes)
    (tmp_path / "in/one.txt").write_text("a caption\n")
    (tmp_path / "in/sub/two.MKV").write_bytes(video_bytes)
    (tmp_path / "in/notes.pdf").write_bytes(b"x")
    rows = fetch({"type": "local", "path": str(tmp_path / "in")}, tmp_path / "out")
    assert [r["path"].split("/")[-1] for r in rows] == ["one.mp4", "two.MKV"]
    assert rows[0]["captions"][0]["text"] == "a caption" and rows[1]["captions"] == []
    assert all(r["sha256"] == sha(video_bytes) and r["bytes"] == len(video_bytes) for r in rows)
    assert rows[0]["id"] == manifest.video_id(str((tmp_path / "in/one.mp4").resolve()))
    glob_rows = fetch({"type": "local", "path": str(tmp_path / "in/**/*.MKV"), "extensions": [".mkv"]}, tmp_path)
    assert len(glob_rows) == 1
    with pytest.raises(InputError, match="source.path"):
        fetch({"type": "local", "path": str(tmp_path / "missing")}, tmp_path)


def test_urls_resume_after_drop_checksum_mismatch_and_404(tmp_path, video_bytes):
    with Server() as srv:
        srv.files = {"/a.mp4": video_bytes, "/b.mp4": video_bytes, "/bad.mp4": video_bytes}
        srv.drop_once["/a.mp4"] = len(video_bytes) // 3
        entries = [
            {"url": f"{srv.url}/a.mp4", "sha256": sha(video_bytes), "caption": "first"},
            {"url": f"{srv.url}/b.mp4", "bytes": len(video_bytes)},
            {"url": f"{srv.url}/bad.mp4", "sha256": "0" * 64},
            {"url": f"{srv.url}/missing.mp4"},
        ]
        (tmp_path / "list.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
        src = {"type": "urls", "list": str(tmp_path / "list.jsonl"), "retries": 2, "workers": 2}
        rows = fetch(src, tmp_path / "out")
        by = {r["source"].rsplit("/", 1)[1]: r for r in rows}
        assert by["a.mp4"]["error"] == "" and by["a.mp4"]["sha256"] == sha(video_bytes)
        assert (tmp_path / "out" / by["a.mp4"]["path"].split("/")[-1]).read_bytes() == video_bytes
        resumed = [rng for path, _, rng in srv.requests if path == "/a.mp4" and rng]
        assert resumed == [f"bytes={len(video_bytes) // 3}-"], "the dropped download resumed, not restarted"
        assert by["b.mp4"]["error"] == "" and by["a.mp4"]["captions"][0]["text"] == "first"
        assert "sha256 mismatch" in by["bad.mp4"]["error"] and not list((tmp_path / "out").glob("*bad*"))
        assert "404" in by["missing.mp4"]["error"]
        n = len(srv.requests)
        again = fetch(src, tmp_path / "out")  # finished files are not downloaded again
        assert [r["sha256"] for r in again[:2]] == [by["a.mp4"]["sha256"], by["b.mp4"]["sha256"]]
        assert sum(1 for p, _, _ in srv.requests[n:] if p in ("/a.mp4", "/b.mp4")) == 0


def test_pixabay_lists_pages_and_never_leaks_the_key(tmp_path, video_bytes, monkeypatch, caplog):
    secret = "SECRET-KEY-123"
    monkeypatch.setenv("PIXABAY_API_KEY", secret)
    with Server() as srv:
        srv.files = {f"/v{i}.mp4": video_bytes for i in range(3)}

        def api(query):
            assert query["key"] == [secret]
            page = int(query["page"][0])
            hits = [{"id": i, "tags": f"tag{i}", "videos": {"large": {"url": f"{srv.url}/v{i}.mp4?token={secret}",
                                                                          "size": len(video_bytes)}}}
                    for i in range(3)][(page - 1) * 2: page * 2]
            return {"totalHits": 3, "hits": hits}

        srv.api["/api/videos/"] = api
        srv.files["/gone.mp4"] = b""
        src = {"type": "pixabay", "query": "cats", "per_page": 2, "max_videos": 3,
               "api_url": f"{srv.url}/api/videos/", "retries": 0}
        with caplog.at_level(logging.DEBUG):
            rows = fetch(src, tmp_path / "out")
    assert [r["captions"][0]["text"] for r in rows] == ["tag0", "tag1", "tag2"]
    assert all(not r["error"] for r in rows)
    dump = json.dumps(rows) + caplog.text + "".join(p.name for p in (tmp_path / "out").iterdir())
    assert secret not in dump

    monkeypatch.setenv("PIXABAY_API_KEY", secret)
    with Server() as srv:  # the API is down: the error names the problem, not the key
        src["api_url"] = f"{srv.url}/nothing-here/"
        with pytest.raises(RuntimeError) as err:
            fetch(src, tmp_path / "out2")
    assert "404" in str(err.value) and secret not in str(err.value)
    monkeypatch.delenv("PIXABAY_API_KEY")
    with pytest.raises(InputError, match="PIXABAY_API_KEY"):
        fetch(src, tmp_path / "out3")


@pytest.mark.parametrize("fmt", ["miradata", "vript", "openvid", "opensora_plan"])
def test_annotation_formats(tmp_path, video_bytes, fmt):
    root = tmp_path / "videos"
    root.mkdir()
    (root / "c1.mp4").write_bytes(video_bytes)
    ann = tmp_path / "ann"
    if fmt == "miradata":
        ann = ann.with_suffix(".csv")
        ann.write_text("clip_id,file_path,short_caption,dense_caption,camera_caption\n"
                       "1,c1.mp4,short one,dense one,pan left\n2,c2.mp4,s2,d2,\n")
    elif fmt == "vript":
        ann = ann.with_suffix(".json")
        ann.write_text(json.dumps({"data": {"c1": {"caption": {"content": "dense one", "shot_type": "close"}},
                                            "c2": {"caption": "d2"}}}))
    elif fmt == "openvid":
        ann = ann.with_suffix(".csv")
        ann.write_text("video,caption,aesthetic score\nc1.mp4,dense one,5.1\nc2.mp4,d2,4.0\n")
    else:
        ann = ann.with_suffix(".json")
        ann.write_text(json.dumps([{"path": "c1.mp4", "cap": ["dense one"]}, {"path": "c1.mp4", "cap": ["again"]},
                                   {"path": "c2.mp4", "cap": ["d2"]}]))
    rows = fetch({"type": "annotations", "format": fmt, "path": str(ann), "video_root": str(root)}, tmp_path)
    assert len(rows) == 2
    good, missing = rows
    assert good["error"] == "" and good["sha256"] == sha(video_bytes)
    assert good["captions"][0]["text"] == "dense one"
    assert "video not found" in missing["error"]
