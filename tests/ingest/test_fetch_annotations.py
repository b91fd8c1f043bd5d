"""`annotations` source: small annotation files in each dataset's published layout, built here, turned
into manifest rows for videos on disk or behind a URL prefix."""

import csv
import hashlib
import json

import numpy as np
import pytest
from httpserver import Server

from longvid.ingest import manifest
from longvid.ingest.fetch import fetch
from longvid.io import InputError


def blob(seed: int) -> bytes:
    return np.random.default_rng(seed).bytes(20_000)


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def put(root, rel: str, seed: int) -> bytes:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_bytes(blob(seed))
    return blob(seed)


def annotations(fmt, ann, root, **kw):
    return {"type": "annotations", "format": fmt, "path": str(ann), "video_root": str(root), **kw}


MIRA_COLUMNS = ["clip_id", "source", "video_url", "video_id", "width", "height", "fps", "seconds", "timestamp",
                "frame_number", "framestamp", "file_path", "short_caption", "dense_caption", "background_caption",
                "main_object_caption", "style_caption", "camera_caption"]


def test_miradata_meta_csv(tmp_path):
    root = tmp_path / "mira"
    data = put(root, "000000008/000000008783.1.mp4", 1)
    dense = 'A crowded car show, "polished" chrome,\nslow pans across the hall.'
    rows = [
        ["8783.1", "youtube_city", "https://www.youtube.com/watch?v=AJp_ANXoGoM", "AJp_ANXoGoM", "1280", "720",
         "29.97", "60.2", "['0:01:30.000', '0:02:30.200']", "1804", "[2697, 4501]", "000000008/000000008783.1.mp4",
         "People look at cars.", dense, "An exhibition hall.", "Visitors.", "Realistic.", "Smooth tracking."],
        ["8783.2", "youtube_city", "", "AJp_ANXoGoM", "1280", "720", "30", "61", "", "", "",
         "000000008/000000008783.2.mp4", "Short.", "Dense.", "", "", "", ""],
    ]
    ann = tmp_path / "miradata_v1_9k.csv"
    with open(ann, "w", newline="") as f:
        csv.writer(f).writerows([MIRA_COLUMNS, *rows])
    good, missing = fetch(annotations("miradata", ann, root), tmp_path / "out")
    assert good["path"] == str(root / "000000008/000000008783.1.mp4") and good["sha256"] == sha(data)
    assert [c["text"] for c in good["captions"]] == [dense, "People look at cars."]  # dense preferred
    assert good["meta"]["clip_id"] == "8783.1" and good["meta"]["fps"] == 29.97 and good["meta"]["width"] == 1280
    assert good["meta"]["structured_captions"] == {"background_caption": "An exhibition hall.",
                                                   "main_object_caption": "Visitors.", "style_caption": "Realistic.",
                                                   "camera_caption": "Smooth tracking."}
    assert missing["error"].startswith("video not found") and missing["captions"][0]["text"] == "Dense."
    (short_first,) = fetch(annotations("miradata", ann, root, caption_keys=["short_caption"], limit=1),
                           tmp_path / "out")
    assert [c["text"] for c in short_first["captions"]] == ["People look at cars."]


def test_vript_per_video_json_folder_and_per_clip_jsonl(tmp_path):
    root = tmp_path / "clips"
    a1, a2, b1 = put(root, "339dXVNQXac/339dXVNQXac-Scene-001.mp4", 1), \
        put(root, "339dXVNQXac/339dXVNQXac-Scene-002.mp4", 2), put(root, "007EvOaWFOA/007EvOaWFOA-Scene-001.mp4", 3)

    def clip(vid, n, content):
        return {"video_id": vid, "clip_id": f"{vid}-Scene-{n:03d}", "video_title": "A title",
                "caption": {"shot_type": "Close-up", "camera_movement": "Pan left", "content": content,
                            "scene_title": "Intro"}, "voiceover": ["hello"]}

    caps = tmp_path / "vript_captions"
    caps.mkdir()
    for vid, n_clips in (("339dXVNQXac", 2), ("007EvOaWFOA", 1)):
        doc = {"meta": {"video_id": vid, "video_title": "A title", "num_clips": n_clips, "integrity": True},
               "data": {f"{vid}-Scene-{n:03d}": clip(vid, n, f"{vid} scene {n}") for n in range(1, n_clips + 1)}}
        (caps / f"{vid}_caption.json").write_text(json.dumps(doc))
    rows = fetch(annotations("vript", caps, root), tmp_path / "out")
    assert [r["sha256"] for r in rows] == [sha(b1), sha(a1), sha(a2)]  # files in name order
    assert rows[1]["captions"] == [manifest.caption("339dXVNQXac scene 1")]
    assert rows[1]["meta"] == {"format": "vript", "clip_id": "339dXVNQXac-Scene-001", "video_id": "339dXVNQXac",
                               "shot_type": "Close-up", "camera_movement": "Pan left", "scene_title": "Intro",
                               "video_title": "A title", "voiceover": ["hello"]}

    jsonl = tmp_path / "vript_long_videos_captions.jsonl"
    with open(jsonl, "w") as f:
        for vid, n in (("339dXVNQXac", 2), ("007EvOaWFOA", 1), ("007EvOaWFOA", 9)):
            c = clip(vid, n, f"{vid} scene {n}")
            del c["video_id"]  # the clip's video comes from `meta` (or its clip id)
            f.write(json.dumps({"meta": {"video_id": vid}, **c}) + "\n")
    rows = fetch(annotations("vript", jsonl, root), tmp_path / "out")
    assert [r["sha256"] for r in rows[:2]] == [sha(a2), sha(b1)]
    assert "video not found" in rows[2]["error"] and rows[2]["path"].endswith("007EvOaWFOA-Scene-009.mp4")


def test_openvid_csv_with_videos_in_unzipped_parts(tmp_path):
    root = tmp_path / "OpenVid"
    v1, v2 = put(root, "part_000_of_186/celebv_abc_0.mp4", 1), put(root, "part_001_of_186/pexels_9.mp4", 2)
    put(root, "part_001_of_186/twice.mp4", 3)
    put(root, "part_002_of_186/twice.mp4", 4)  # the same name in two parts: ambiguous
    ann = tmp_path / "OpenVid-1M.csv"
    ann.write_text("video,caption,aesthetic score,motion score,temporal consistency score,camera motion,frame,fps,"
                   "seconds\n"
                   'celebv_abc_0.mp4,"A woman smiles, then turns.",5.12,3.4,0.99,static,120,30.0,4.0\n'
                   "pexels_9.mp4,Waves roll in.,4.8,1.1,0.97,pan_right,300,25,12\n"
                   "twice.mp4,Which one?,4,1,1,static,10,10,1\n")
    first, second, twice = fetch(annotations("openvid", ann, root), tmp_path / "out")
    assert (first["sha256"], second["sha256"]) == (sha(v1), sha(v2))
    assert first["path"] == str(root / "part_000_of_186/celebv_abc_0.mp4")
    assert first["captions"] == [manifest.caption("A woman smiles, then turns.")]
    assert first["meta"] == {"format": "openvid", "aesthetic_score": 5.12, "motion_score": 3.4,
                             "temporal_consistency_score": 0.99, "camera_motion": "static", "frame": 120,
                             "fps": 30.0, "seconds": 4.0}
    assert "video not found" in twice["error"]


def test_opensora_plan_json_merges_cuts_into_timed_captions(tmp_path):
    root = tmp_path / "osp"
    data = put(root, "pixabay_v2/folder_01/123_resize1080p.mp4", 1)
    records = [
        {"path": "pixabay_v2/folder_01/123.mp4", "cap": ["A fox runs through snow."], "resolution":
            {"height": 1080, "width": 1920}, "fps": 24, "num_frames": 480, "aesthetic": 5.3, "cut": [0, 240]},
        {"path": "pixabay_v2/folder_01/123.mp4", "cap": ["The fox stops and looks around."], "fps": 24,
         "cut": [240, 480]},
        {"path": "pixabay_v2/folder_01/123.mp4", "cap": "The fox stops and looks around.", "fps": 24,
         "cut": [240, 480]},  # a repeated annotation is not a second caption
        {"path": "pixabay_v2/folder_02/456.mp4", "cap": ["Rain."], "frame_idx": "0:65", "fps": 13},
        {"cap": ["no path"]},
    ]
    ann = tmp_path / "video_pixabay_65f_601513.json"
    ann.write_text(json.dumps(records))
    rows = fetch(annotations("opensora_plan", ann, root, path_template="{dir}/{stem}_resize1080p{ext}"),
                 tmp_path / "out")
    assert len(rows) == 2
    fox, rain = rows
    assert fox["sha256"] == sha(data)
    assert fox["captions"] == [manifest.caption("A fox runs through snow.", 0.0, 10.0),
                               manifest.caption("The fox stops and looks around.", 10.0, 20.0)]
    assert fox["meta"] == {"format": "opensora_plan", "resolution": {"height": 1080, "width": 1920}, "fps": 24,
                           "num_frames": 480, "aesthetic": 5.3}
    assert rain["captions"] == [manifest.caption("Rain.", 0.0, 5.0)] and "video not found" in rain["error"]


def test_url_video_root_downloads_with_captions(tmp_path):
    ann = tmp_path / "OpenVidHD.csv"
    ann.write_text("video,caption\nclip one.mp4,First.\nclip2.mp4,Second.\nmissing.mp4,Gone.\n")
    with Server() as srv:
        srv.files = {"/hd/clip%20one.mp4": blob(1), "/hd/clip2.mp4": blob(2)}
        rows = fetch(annotations("openvid", ann, f"{srv.url}/hd/", backoff_s=0, retries=1), tmp_path / "out")
    assert [r["source"] for r in rows] == [f"{srv.url}/hd/clip%20one.mp4", f"{srv.url}/hd/clip2.mp4",
                                           f"{srv.url}/hd/missing.mp4"]
    assert [r["sha256"] for r in rows[:2]] == [sha(blob(1)), sha(blob(2))]
    assert [r["captions"][0]["text"] for r in rows] == ["First.", "Second.", "Gone."]
    assert rows[0]["path"].startswith(str(tmp_path / "out")) and "HTTP 404" in rows[2]["error"]


def test_bad_annotation_sources_name_the_problem(tmp_path):
    root = tmp_path / "v"
    root.mkdir()
    ann = tmp_path / "a.jsonl"
    ann.write_text('{"path": "x.mp4", "cap": ["ok"]}\n{"path": \n')
    listing = tmp_path / "b.json"
    listing.write_text('[\n {"path": "x.mp4"},\n {"path": }\n]\n')
    cases = [
        (annotations("webvid", ann, root), r"source\.format: 'webvid' is not one of"),
        (annotations("opensora_plan", tmp_path / "none.json", root), r"source\.path: no annotation file"),
        (annotations("opensora_plan", ann, tmp_path / "nowhere"), r"source\.video_root: no such folder"),
        ({**annotations("opensora_plan", ann, root), "video_root": ""}, r"source\.video_root: required"),
        (annotations("opensora_plan", ann, root), r"a\.jsonl:2: not valid JSON"),
        (annotations("opensora_plan", listing, root), r"b\.json:3: not valid JSON"),
    ]
    for src, err in cases:
        with pytest.raises(InputError, match=err):
            fetch(src, tmp_path / "out")
