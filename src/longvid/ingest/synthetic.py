"""The embedded default dataset: short videos of moving shapes with exact, known captions.

Each video is a few shots of the shapes world (longvid.shapes): each shot has its own background
colour (so a scene detector has a real cut to find) and one object of a known shape and colour
moving in a known direction. The ground truth
is kept in the manifest (`meta.shots`) and as time-stamped source captions, so later stages can check
cuts, captions and generated samples against it.

Source config keys: type: synthetic, num_videos, shots_per_video, shot_seconds [min, max], fps,
width, height, object_size, seed (defaults and meanings in longvid/schemas/dataset.schema.yaml).
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlencode

import numpy as np

from longvid import config as lvconfig
from longvid.ingest import manifest
from longvid.shapes import BACKGROUNDS, COLORS, DIRECTIONS, SHAPES, caption_of, render_video

log = logging.getLogger(__name__)
# Bumped when the same settings render other pixels (2: the object stops half a radius from the border).
RENDERER_VERSION = 2


def plan_video(rng: np.random.Generator, n_shots: int, seconds: tuple[float, float], fps: float) -> list[dict]:
    shots, start, last_bg = [], 0, None
    for _ in range(n_shots):
        background = rng.choice([b for b in BACKGROUNDS if b != last_bg])
        n = int(round(rng.uniform(*seconds) * fps))
        shots.append({
            "shape": str(rng.choice(SHAPES)), "color": str(rng.choice(list(COLORS))),
            "direction": str(rng.choice(list(DIRECTIONS))), "background": str(background),
            "start_frame": start, "end_frame": start + n,
        })
        start, last_bg = start + n, background
    return shots


def fetch(source: dict, out_dir: Path) -> list[dict]:
    source = lvconfig.source(source)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fps, h, w, size = float(source["fps"]), source["height"], source["width"], source["object_size"]
    seconds = tuple(source["shot_seconds"])
    rng = np.random.default_rng(source["seed"])
    rows = []
    for i in range(source["num_videos"]):
        shots = plan_video(rng, source["shots_per_video"], seconds, fps)
        # Every generator setting, and the renderer's version, is part of the source name, so the id
        # (and file) changes with them.
        params = sorted([*((k, str(v)) for k, v in source.items()), ("renderer", str(RENDERER_VERSION))])
        src = f"synthetic://shapes/{i:04d}?{urlencode(params)}"
        path = out_dir / f"{manifest.video_id(src)}.mp4"
        if not path.exists():  # deterministic given the settings: an existing file is the same video
            tmp = path.with_name(f".{path.name}.tmp.mp4")
            render_video(tmp, shots, fps, h, w, size)
            tmp.replace(path)
        caps = [manifest.caption(caption_of(s), s["start_frame"] / fps, s["end_frame"] / fps) for s in shots]
        rows.append(manifest.row(src, path,
                                 captions=caps, meta={"fps": fps, "shots": shots}))
    log.info("synthetic: %d videos in %s", len(rows), out_dir)
    return rows
