"""`annotations` source: the metadata files of public video datasets turned into the manifest.

Config keys (the dataset's `source` section; defaults live in longvid/schemas/dataset.schema.yaml):

    type: annotations
    format: miradata | vript | openvid | opensora_plan
    path: OpenVid-1M.csv     the annotation file; a folder or glob of them also works (Vript ships
                             one `<video_id>_caption.json` per video)
    video_root: data/openvid the folder holding the videos, or an http(s)/s3/gs URL prefix to
                             download them from
    path_template: null      where a record's video lies under video_root: a Python format string
                             over the record's fields plus {default} {dir} {stem} {ext} of the
                             format's default path (e.g. Open-Sora-Plan's resized copies:
                             "{dir}/{stem}_resize1080p{ext}"). A video not found there is looked up
                             by file name anywhere under a local video_root (unzipped parts).
    caption_keys: [dense_caption, short_caption]   miradata: caption columns, preferred first
    limit: null              only the first N records (to try a dataset out)
    copy: false              local video_root: copy the videos into the raw folder (see `local`)
    workers, retries, timeout_s, backoff_s, storage_options    URL video_root: the `urls` keys

What each format is read as. From the datasets' published descriptions; what could not be checked
against a released file is marked (unverified). Absent columns are skipped, not errors.
  miradata       meta CSV, one clip per row (MiraData README): clip_id, source, video_url, video_id,
                 width, height, fps, seconds, timestamp, frame_number, framestamp, file_path and the
                 captions short/dense/background/main_object/style/camera_caption. Path {file_path};
                 the v0 meta (`index`, no file_path) -> {index}.mp4. Captions: `caption_keys` in
                 order; the other *_caption columns go to meta.structured_captions.
  vript          vript_captions/<video_id>_caption.json: {"meta": {video_id, video_title, ...},
                 "data": {clip_id: {video_id, clip_id, caption: {shot_type, camera_movement,
                 content, scene_title}, voiceover}}} (Vript README); or the JSONL with one clip per
                 line carrying the same fields plus `meta` (unverified). Path {video_id}/{clip_id}.mp4
                 as the clip zips unpack. Caption: caption.content; the rest in meta.
  openvid        OpenVid-1M.csv / OpenVidHD.csv: video, caption, aesthetic score, motion score,
                 temporal consistency score, camera motion, frame, fps, seconds. Path {video}; the
                 zips unpack into part folders, which the by-name lookup covers. Scores go to meta
                 (spaces -> underscores, numbers parsed).
  opensora_plan  JSON list (Open-Sora-Plan docs/T2V.md): {path, cap: [...], resolution, num_frames,
                 fps, aesthetic, cut: [start_frame, end_frame], crop, tech, motion}. Path {path}.
                 Records of one path merge into one video whose captions carry the cut span in
                 seconds (cut / fps); `frame_idx: "s:e"` is read like `cut` (unverified). .pkl
                 annotations are not read: unpickling runs code.
A video missing under a local video_root becomes an error row ("video not found"); records without
a video path are skipped and counted in the log.
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import os
import re
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from longvid import config as lvconfig
from longvid.ingest import manifest
from longvid.ingest.sources.download import download_all
from longvid.ingest.sources.local import materialise_all
from longvid.ingest.sources.urls import download_options, normalise
from longvid.io import InputError

log = logging.getLogger(__name__)

ANNOTATION_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl")
MIRA_META = ("clip_id", "source", "video_url", "video_id", "width", "height", "fps", "seconds", "timestamp",
             "frame_number", "framestamp", "index", "start_frame", "end_frame")
MIRA_NUMBERS = ("width", "height", "fps", "seconds", "frame_number", "start_frame", "end_frame")
VRIPT_META = ("shot_type", "camera_movement", "scene_title")
OSP_META = ("resolution", "num_frames", "fps", "aesthetic", "tech", "motion", "crop")


def _num(v):
    """CSV cells are strings: numbers become numbers, the rest stays as it is."""
    if isinstance(v, str):
        try:
            f = float(v)
            return int(f) if f.is_integer() and re.fullmatch(r"-?\d+", v.strip()) else f
        except ValueError:
            return v
    return v


def annotation_files(spec: str) -> list[Path]:
    p = Path(spec).expanduser()
    if any(c in spec for c in "*?["):
        files = [Path(f) for f in glob.glob(str(p), recursive=True)]
    elif p.is_dir():
        files = [f for f in p.rglob("*") if f.suffix.lower() in ANNOTATION_SUFFIXES]
    else:
        files = [p] if p.is_file() else []
    files = sorted(f for f in files if f.is_file())
    if not files:
        raise InputError(f"source.path: no annotation file at {spec}")
    return files


def read_records(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        csv.field_size_limit(1 << 30)  # dense captions run to thousands of characters
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
    if suffix == ".pkl":
        raise InputError(f"{path}: pickled annotations are not read (unpickling runs code); convert to JSON")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if text.lstrip().startswith("["):  # a JSON list with an error in it, not JSONL
            raise InputError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        records = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise InputError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        data = records
    data = data if isinstance(data, list) else [data]
    if not all(isinstance(r, dict) for r in data):
        raise InputError(f"{path}: expected JSON objects (one per record)")
    return data


# Each format yields (fields for the path template, default template, captions, meta) per record.

def miradata(records: list[dict], source: dict):
    keys = list(source["caption_keys"])
    for r in records:
        caps = [manifest.caption(r[k].strip()) for k in keys if str(r.get(k) or "").strip()]
        meta = {k: _num(r[k]) if k in MIRA_NUMBERS else r[k] for k in MIRA_META if r.get(k) not in (None, "")}
        rest = {k: r[k] for k in r
                if k and k.endswith("_caption") and k not in keys and str(r[k] or "").strip()}
        if rest:
            meta["structured_captions"] = rest
        default = ("{file_path}" if r.get("file_path") else
                   "{index}.mp4" if r.get("index") else "{clip_id}.mp4")
        yield r, default, caps, meta


def _vript_clip(clip: dict, video_meta: dict):
    cap = clip.get("caption") or ""
    extra = {k: cap[k] for k in VRIPT_META if cap.get(k)} if isinstance(cap, dict) else {}
    text = (cap.get("content") or "") if isinstance(cap, dict) else str(cap)
    clip_id = str(clip.get("clip_id") or "")
    video_id = clip.get("video_id") or video_meta.get("video_id") or re.sub(r"-Scene-\d+$", "", clip_id)
    meta = {"clip_id": clip_id, "video_id": video_id, **extra,
            "video_title": clip.get("video_title") or video_meta.get("video_title"),
            "voiceover": clip.get("voiceover")}
    fields = {**clip, "clip_id": clip_id, "video_id": video_id}
    caps = [manifest.caption(text.strip())] if text.strip() else []
    meta = {k: v for k, v in meta.items() if v not in (None, "", [])}
    return fields, "{video_id}/{clip_id}.mp4", caps, meta


def vript(records: list[dict], source: dict):
    for r in records:
        if isinstance(r.get("data"), dict):  # one video's file: its clips keyed by clip id
            for clip_id, clip in r["data"].items():
                clip = clip if isinstance(clip, dict) else {"caption": clip}
                yield _vript_clip({"clip_id": clip_id, **clip}, r.get("meta") or {})
        else:  # one clip per record
            yield _vript_clip(r, r.get("meta") or {})


def openvid(records: list[dict], source: dict):
    for r in records:
        text = str(r.get("caption") or r.get("text") or "").strip()
        meta = {k.strip().replace(" ", "_"): _num(v) for k, v in r.items()
                if k and k not in ("video", "path", "caption", "text") and v not in (None, "")}
        yield {**r, "video": r.get("video") or r.get("path") or ""}, "{video}", \
            [manifest.caption(text)] if text else [], meta


def opensora_plan(records: list[dict], source: dict):
    for r in records:
        caps = r.get("cap") or []
        caps = [caps] if isinstance(caps, str) else caps
        cut, fps = r.get("cut") or str(r.get("frame_idx") or "").split(":"), r.get("fps")
        try:
            start, end = float(cut[0]) / float(fps), float(cut[1]) / float(fps)
        except (TypeError, ValueError, IndexError, ZeroDivisionError):
            start = end = None  # no (usable) span: the caption covers the whole video
        meta = {k: r[k] for k in OSP_META if k in r}
        yield r, "{path}", [manifest.caption(str(c).strip(), start, end) for c in caps if str(c).strip()], meta


FORMATS = {"miradata": miradata, "vript": vript, "openvid": openvid, "opensora_plan": opensora_plan}


def relative_path(fields: dict, default: str, template: str | None) -> str:
    """The video's path under video_root; "" when the record lacks a field the template names."""
    try:
        rel = default.format(**fields)
        if template:
            p = PurePosixPath(rel)
            rel = template.format(**{**fields, "default": rel, "dir": str(p.parent), "stem": p.stem,
                                     "ext": p.suffix})
    except (KeyError, IndexError, ValueError):
        return ""
    return rel.strip()


def videos(source: dict) -> tuple[list[dict], int]:
    """One item per video (records of the same path merged), and the number of records skipped."""
    fmt = source["format"]
    if fmt not in FORMATS:  # the schema's enum, kept in step with FORMATS
        raise InputError(f"source.format: {fmt!r} is not one of {', '.join(FORMATS)}")
    limit = source["limit"]
    by_path: dict[str, dict] = {}
    skipped = n = 0
    for f in annotation_files(source["path"]):
        if limit is not None and n >= int(limit):
            break
        for fields, default, caps, meta in FORMATS[fmt](read_records(f), source):
            if limit is not None and n >= int(limit):
                break
            n += 1
            rel = relative_path(fields, default, source["path_template"])
            if not rel:
                skipped += 1
                continue
            item = by_path.setdefault(rel, {"rel": rel, "captions": [], "meta": {"format": fmt, **meta}})
            item["captions"] += [c for c in caps if c not in item["captions"]]
    return list(by_path.values()), skipped


class NameIndex:
    """Files under a folder by name, built on first use (only when a video is not where expected)."""

    def __init__(self, root: Path):
        self.root, self.names = root, None

    def find(self, name: str) -> Path | None:
        if self.names is None:
            self.names = {}
            for d, _, files in os.walk(self.root):
                for fn in files:
                    # a name found twice is ambiguous: better "not found" than the wrong video
                    self.names[fn] = None if fn in self.names else Path(d) / fn
        return self.names.get(name)


def fetch(source: dict, out_dir: Path) -> list[dict]:
    source = lvconfig.source(source)
    root = source["video_root"]
    if not root:
        raise InputError("source.video_root: required (a folder, or a URL prefix to download from)")
    remote = re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", root)
    base = Path(root).expanduser()
    if not remote and not base.is_dir():
        raise InputError(f"source.video_root: no such folder: {root}")
    items, skipped = videos(source)
    if skipped:
        log.warning("annotations: %d records name no video path; skipped", skipped)
    if remote:
        prefix = root.rstrip("/")
        entries = [normalise({"url": f"{prefix}/{quote(it['rel'], safe='/')}", "captions": it["captions"],
                              "meta": it["meta"]}, f"{source['path']}: {it['rel']}") for it in items]
        return download_all(entries, Path(out_dir), **download_options(source))
    index = NameIndex(base)
    local: dict[str, dict] = {}  # by file: two paths the name lookup resolves alike are one video
    for it in items:
        video = base / it["rel"]
        if not video.is_file():
            video = index.find(PurePosixPath(it["rel"]).name) or video
        item = local.setdefault(str(video), {"source": str(video), "path": video, "captions": [],
                                             "meta": it["meta"]})
        item["captions"] += [c for c in it["captions"] if c not in item["captions"]]
    rows = materialise_all(list(local.values()), Path(out_dir), source["copy"], source["workers"])
    log.info("annotations (%s): %d videos, %d not found", source["format"], len(rows),
             sum(bool(r["error"]) for r in rows))
    return rows
