"""Probe every video of a shard by decoding it: the frame count is counted, not read from the
container (container metadata is often wrong or missing), and a file that fails to decode becomes a
row with an `error` instead of stopping the shard.

Columns added to each manifest row:
  duration (s), num_frames (decoded), avg_fps, real_fps (the stream's base rate), width, height
  (as displayed: swapped when the display matrix rotates by 90 or 270 degrees, as players and
  ffmpeg's autorotate show it), rotation (degrees), codec, pix_fmt, bitrate (bit/s), has_audio,
  error ("" when fine).

Videos are probed in a process pool (decoding is CPU bound). Progress is journaled per video, so a
job killed mid-shard resumes where it stopped.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tqdm import tqdm

from longvid.io import RowJournal, read_jsonl

log = logging.getLogger(__name__)

PROBE_COLUMNS = ("duration", "num_frames", "avg_fps", "real_fps", "width", "height", "rotation",
                 "codec", "pix_fmt", "bitrate", "has_audio")


def _one_line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())


def probe_file(path: str) -> dict:
    """Decode the first video stream of `path`; return the probe columns plus `error`."""
    import av  # imported in the worker: keeps the parent light and fork-safe

    out = dict.fromkeys(PROBE_COLUMNS)
    out["error"] = ""
    try:
        if os.path.getsize(path) == 0:
            return {**out, "error": "empty file (0 bytes)"}
        with av.open(path) as container:
            if not container.streams.video:
                return {**out, "has_audio": bool(container.streams.audio), "error": "no video stream"}
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            ctx = stream.codec_context
            out.update(
                codec=ctx.name, pix_fmt=ctx.format.name if ctx.format else None,
                width=ctx.width, height=ctx.height, has_audio=bool(container.streams.audio),
                real_fps=float(stream.base_rate) if stream.base_rate else None,
                bitrate=container.bit_rate or stream.bit_rate,
            )
            n, first_pts, last_pts, rotation = 0, None, None, 0
            try:
                for frame in container.decode(stream):
                    if n == 0:
                        rotation = int(frame.rotation or 0)
                        first_pts = frame.pts
                    last_pts = frame.pts if frame.pts is not None else last_pts
                    n += 1
            except av.error.FFmpegError as e:
                out["error"] = f"decode failed after {n} frames: {_one_line(e)}"
            out["num_frames"], out["rotation"] = n, rotation
            if rotation % 180 == 90:  # also -90: coded sideways, shown upright
                out["width"], out["height"] = out["height"], out["width"]
            if n == 0:
                out["error"] = out["error"] or "no decodable video frames"
                return out
            if stream.frames and n < stream.frames and not out["error"]:
                out["error"] = f"truncated: decoded {n} of the {stream.frames} frames the container lists"
            rate = stream.average_rate or stream.base_rate
            frame_dur = 1 / float(rate) if rate else 0.0
            if first_pts is not None and last_pts is not None and stream.time_base:
                out["duration"] = float((last_pts - first_pts) * stream.time_base) + frame_dur
            else:
                out["duration"] = n * frame_dur
            out["avg_fps"] = n / out["duration"] if out["duration"] else None
    except (av.error.FFmpegError, OSError, ValueError) as e:
        out["error"] = _one_line(e)
    return out


def probe_rows(rows: list[dict], journal: RowJournal, workers: int) -> None:
    todo = [r for r in rows if r["id"] not in journal]
    fetched = [r for r in todo if not r.get("error")]
    for r in todo:  # fetch failures stay error rows; nothing to decode
        if r.get("error"):
            journal.append({**r, **dict.fromkeys(PROBE_COLUMNS)})
    if not fetched:
        return
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(probe_file, [r["path"] for r in fetched], chunksize=1)
        for row, res in tqdm(zip(fetched, results), total=len(fetched), desc="probe", unit="video",
                             disable=None):
            journal.append({**row, **res})


def probe_shard(cfg: dict, manifest: Path, out: Path, workers: int, name: str) -> int:
    """The probe stage: a shard manifest into `out` (journaled: a rerun skips finished videos)."""
    rows = list(read_jsonl(manifest))
    journal = RowJournal(out)
    probe_rows(rows, journal, workers)
    journal.publish([r["id"] for r in rows])
    bad = [journal.rows[r["id"]] for r in rows if journal.rows[r["id"]]["error"]]
    for r in bad:
        log.warning("probe %s: %s", r["path"], r["error"])
    log.info("%s: probed %d videos, %d with errors", name, len(rows), len(bad))
    return 0
