"""Detect scenes and cut them into clips, frame-accurately.

Per video: PySceneDetect finds shot boundaries (detector, threshold and minimum scene length from
config); optional trims drop seconds at the start/end of every video (intros, credits); scenes
longer than `max_scene_seconds` are split into equal pieces; pieces shorter than
`min_scene_seconds` are dropped. Each piece is cut with ffmpeg by re-encoding from an exact frame
(seek half a frame before it, then `trim` by frame count), so no clip holds a frame of the
neighbouring shot; the cut can resample fps and resize the shorter side (never upscaling). With
`cut: false` every video is one clip, used in place.

Each clip is decoded once more after cutting, so the table records what the file really holds.
Clip files live in the clip directory (`data/clips/{dataset}/{shard}/`); progress is journaled per
video, so a killed job resumes without re-cutting finished videos.
"""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import ffmpeg
from tqdm import tqdm

from longvid.ingest.probe import probe_file
from longvid.io import RowJournal, read_jsonl
from longvid.video import h264, run_ffmpeg

log = logging.getLogger(__name__)

def detect_scenes(path: str, n_frames: int, cfg: dict) -> list[tuple[int, int]]:
    """Shot boundaries as [start, end) source-frame ranges covering the video."""
    if cfg["detector"] == "none":
        return [(0, n_frames)]
    import scenedetect as sd

    detectors = {
        "content": lambda: sd.ContentDetector(threshold=cfg["threshold"], min_scene_len=cfg["min_scene_len"]),
        "adaptive": lambda: sd.AdaptiveDetector(adaptive_threshold=cfg["threshold"],
                                                min_scene_len=cfg["min_scene_len"]),
        "threshold": lambda: sd.ThresholdDetector(threshold=cfg["threshold"], min_scene_len=cfg["min_scene_len"]),
        "histogram": lambda: sd.HistogramDetector(threshold=cfg["threshold"], min_scene_len=cfg["min_scene_len"]),
        "hash": lambda: sd.HashDetector(threshold=cfg["threshold"], min_scene_len=cfg["min_scene_len"]),
    }
    manager = sd.SceneManager()
    manager.add_detector(detectors[cfg["detector"]]())
    manager.detect_scenes(sd.open_video(path, backend="pyav"))
    scenes = [(a.frame_num, b.frame_num) for a, b in manager.get_scene_list(start_in_scene=True)]
    return scenes or [(0, n_frames)]


def plan_pieces(scenes: list[tuple[int, int]], n_frames: int, fps: float, cfg: dict) -> list[tuple[int, int]]:
    """Apply trims, split long scenes into equal pieces, drop short ones."""
    lo = int(round(cfg["trim_start"] * fps))
    hi = n_frames - int(round(cfg["trim_end"] * fps))
    pieces = []
    for a, b in scenes:
        a, b = max(a, lo), min(b, hi)
        if b <= a:
            continue
        if cfg["max_scene_seconds"]:
            max_len = max(1, int(cfg["max_scene_seconds"] * fps))
            k = -(-(b - a) // max_len)  # ceil: the fewest equal pieces that each fit
            edges = [a + (b - a) * i // k for i in range(k + 1)]
            pieces += list(zip(edges[:-1], edges[1:]))
        else:
            pieces.append((a, b))
    min_len = cfg["min_scene_seconds"] * fps
    return [(a, b) for a, b in pieces if b - a >= max(min_len, 1)]


def cut_clip(src: str, dst: Path, start: int, end: int, fps: float, width: int, height: int, cfg: dict) -> None:
    """Re-encode source frames [start, end) of `src` to `dst`. (width, height) is the displayed size:
    ffmpeg autorotates a rotated source before these filters, so the clip is stored upright."""
    seek = max(0.0, (start - 0.5) / fps) if start > 0 else 0.0  # half a frame early, then trim exactly
    video = ffmpeg.input(src, ss=f"{seek:.6f}")["v:0"].trim(end_frame=end - start)
    if cfg["fps"]:
        video = video.filter("fps", cfg["fps"])
    side = cfg["short_side"]
    if side and min(width, height) > side:  # never upscale; -2 keeps the aspect with an even size
        video = video.filter("scale", side, -2) if width <= height else video.filter("scale", -2, side)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp.mp4")
    run_ffmpeg(h264(video, tmp, crf=cfg["crf"]))
    tmp.replace(dst)


def split_video(row: dict, clip_dir: Path, cfg: dict) -> dict:
    """All clips of one probed video, as {"id": video id, "clips": [clip rows]}."""
    base = {"video_id": row["id"], "source_path": row["path"], "captions": row.get("captions", []),
            "meta": row.get("meta", {})}
    if row.get("error"):
        return {"id": row["id"], "clips": [{**base, "id": f"{row['id']}_err", "error": row["error"]}]}
    fps, n = row["avg_fps"], row["num_frames"]
    if not cfg["cut"]:
        clip = {**base, "id": f"{row['id']}_000", "path": row["path"], "start_frame": 0, "end_frame": n,
                "start": 0.0, "end": row["duration"], "error": ""}
        return {"id": row["id"], "clips": [{**clip, **_measure(row["path"])}]}
    try:
        pieces = plan_pieces(detect_scenes(row["path"], n, cfg), n, fps, cfg)
    except Exception as e:  # a detector crash on one odd file must not stop the shard
        return {"id": row["id"], "clips": [{**base, "id": f"{row['id']}_err",
                                            "error": f"scene detection failed: {type(e).__name__}: {e}"}]}
    if not pieces:
        return {"id": row["id"], "clips": [{**base, "id": f"{row['id']}_err", "error":
                f"no clip: nothing of {n} frames is left after trims and min_scene_seconds={cfg['min_scene_seconds']}"}]}
    clips = []
    for k, (a, b) in enumerate(pieces):
        clip = {**base, "id": f"{row['id']}_{k:03d}", "start_frame": a, "end_frame": b,
                "start": a / fps, "end": b / fps, "error": ""}
        dst = clip_dir / f"{clip['id']}.mp4"
        try:
            cut_clip(row["path"], dst, a, b, fps, row["width"], row["height"], cfg)
            clip["path"] = str(dst)
            clip.update(_measure(str(dst)))
        except RuntimeError as e:
            clip["error"] = str(e)
        clips.append(clip)
    return {"id": row["id"], "clips": clips}


def _measure(path: str) -> dict:
    p = probe_file(path)
    return {"num_frames": p["num_frames"], "fps": p["avg_fps"], "width": p["width"], "height": p["height"],
            "duration": p["duration"], **({"error": p["error"]} if p["error"] else {})}


def split_shard(cfg: dict, probe: Path, out: Path, clip_dir: Path, workers: int, name: str) -> int:
    """The split stage: every video of a probed shard into clips in `clip_dir`, listed in `out`.

    `cfg` is the split stage's inputs (its section and code version): a journal of other settings
    or of an older algorithm is discarded, so a fixed splitter never reuses stale clips."""
    split_cfg = cfg["split"]
    rows = list(read_jsonl(probe))
    clip_dir.mkdir(parents=True, exist_ok=True)
    journal = RowJournal(out, fingerprint=hashlib.sha1(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12])
    todo = [r for r in rows if r["id"] not in journal]
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        work = pool.map(partial(split_video, clip_dir=clip_dir, cfg=split_cfg), todo)
        for result in tqdm(work, total=len(todo), desc="split", unit="video", disable=None):
            journal.append(result)
    n = journal.publish([r["id"] for r in rows], explode=lambda r: r["clips"])
    # Clips of an earlier run with other settings are not in the table any more: remove them.
    keep = {Path(c["path"]).name for r in journal.rows.values() for c in r["clips"] if c.get("path")}
    for f in clip_dir.glob("*.mp4"):
        if f.name not in keep:
            f.unlink()
    errors = sum(1 for r in journal.rows.values() for c in r["clips"] if c["error"])
    log.info("%s: split %d videos into %d clips (%d errors)", name, len(rows), n, errors)
    return 0
