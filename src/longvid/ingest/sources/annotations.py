"""`annotations` source: the metadata files of public video datasets turned into the manifest.

Config: type: annotations, format: miradata | vript | openvid | opensora_plan, path: the annotation
file, video_root: the folder holding the videos, or an http(s)/s3/gs prefix to download them from
(then the `urls` keys apply: workers, retries, timeout_s).

What each format is read as (from the datasets' published files; columns that are absent are
skipped, not errors):
  miradata       CSV: `file_path` (else `clip_id` + ".mp4"), captions `dense_caption`,
                 `short_caption` (+ main_object/background/style/camera captions kept in meta)
  vript          JSON or JSONL of clips: {"clip_id"|"video_id", "caption": {"content", "shot_type",
                 "camera_movement", "scene_title"} | str}; a top-level {"data": {...}} mapping too
  openvid        CSV: `video`, `caption` (+ scores: aesthetic/motion/temporal consistency in meta)
  opensora_plan  JSON list: {"path", "cap": [str, ...]} (several entries of one path are merged)
A video missing under a local `video_root` becomes an error row.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from longvid.ingest import manifest
from longvid.ingest.sources.urls import download_all
from longvid.io import InputError

MIRA_EXTRA = ("main_object_caption", "background_caption", "style_caption", "camera_caption")


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _json_records(path: Path) -> list:
    text = path.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: neither JSON nor JSONL ({e.msg})") from None
    if isinstance(data, dict):
        data = data.get("data", data)
        return [{"clip_id": k, **v} if isinstance(v, dict) else v for k, v in data.items()]
    return data


def miradata(path: Path) -> list[dict]:
    out = []
    for r in _csv(path):
        rel = r.get("file_path") or (f"{r['clip_id']}.mp4" if r.get("clip_id") else "")
        caps = [r[k] for k in ("dense_caption", "short_caption") if r.get(k)]
        out.append({"rel": rel, "captions": caps, "meta": {k: r[k] for k in MIRA_EXTRA if r.get(k)}})
    return out


def vript(path: Path) -> list[dict]:
    out = []
    for r in _json_records(path):
        cap = r.get("caption", "")
        meta = {}
        if isinstance(cap, dict):
            meta = {k: cap[k] for k in ("shot_type", "camera_movement", "scene_title") if cap.get(k)}
            cap = cap.get("content", "")
        clip = r.get("clip_id") or r.get("video_id") or ""
        out.append({"rel": r.get("path") or (f"{clip}.mp4" if clip else ""), "captions": [cap] if cap else [],
                    "meta": meta})
    return out


def openvid(path: Path) -> list[dict]:
    return [{"rel": r.get("video", ""), "captions": [r["caption"]] if r.get("caption") else [],
             "meta": {k: r[k] for k in r if k not in ("video", "caption") and r[k] != ""}} for r in _csv(path)]


def opensora_plan(path: Path) -> list[dict]:
    merged: dict[str, dict] = {}
    for r in _json_records(path):
        entry = merged.setdefault(r.get("path", ""), {"rel": r.get("path", ""), "captions": [], "meta": {}})
        caps = r.get("cap", [])
        entry["captions"] += [caps] if isinstance(caps, str) else list(caps)
    return list(merged.values())


READERS = {"miradata": miradata, "vript": vript, "openvid": openvid, "opensora_plan": opensora_plan}


def fetch(source: dict, out_dir: Path) -> list[dict]:
    fmt, path, root = source.get("format"), Path(source.get("path") or ""), str(source.get("video_root") or "")
    if fmt not in READERS:
        raise InputError(f"source.format: {fmt!r} is not one of {', '.join(READERS)}")
    if not path.is_file():
        raise InputError(f"source.path: annotation file {path} not found")
    if not root:
        raise InputError("source.video_root: required (a folder, or a URL prefix to download from)")
    entries = [e for e in READERS[fmt](path) if e["rel"]]
    if "://" in root:
        downloads = [{"url": f"{root.rstrip('/')}/{e['rel']}", **e["meta"]} for e in entries]
        rows = download_all(downloads, Path(out_dir), int(source.get("workers", 8)), int(source.get("retries", 4)),
                            float(source.get("timeout_s", 60)))
        for row, e in zip(rows, entries):
            row["captions"] = [manifest.caption(c) for c in e["captions"]]
        return rows
    rows = []
    for e in entries:
        video = Path(root) / e["rel"]
        caps = [manifest.caption(c) for c in e["captions"]]
        error = "" if video.is_file() else f"video not found: {video}"
        rows.append(manifest.row(str(video), video, captions=caps, meta={"format": fmt, **e["meta"]}, error=error))
    return rows
