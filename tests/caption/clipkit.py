"""Small rendered shapes clips and filtered shard tables for the caption tests."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

from longvid import config as lvconfig
from longvid.io import write_jsonl
from longvid.shapes import BACKGROUNDS, COLORS, DIRECTIONS, SHAPES, caption_of, render_video

HERE = Path(__file__).resolve().parent
VLM_SERVER = HERE / "vlm_server.py"
FPS, H, W = 8.0, 84, 112


def shots(n: int) -> list[dict]:
    combos = itertools.product(SHAPES, COLORS, DIRECTIONS, list(BACKGROUNDS)[:3])
    return [{"shape": s, "color": c, "direction": d, "background": b, "start_frame": 0, "end_frame": 16}
            for s, c, d, b in itertools.islice(combos, 0, n * 7, 7)]


def render_clips(folder: Path, n: int, frames: int = 16, shot_list: list[dict] | None = None) -> list[dict]:
    """`n` clip rows (kept) of distinct one-shot clips (`shot_list`, else `shots(n)`), `frames` frames
    at 8 fps, 112x84. bench/caption.py renders its clips with this too."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for k, shot in enumerate(shot_list or shots(n)):
        shot = {**shot, "end_frame": frames}
        path = folder / f"v{k:03d}_000.mp4"
        render_video(path, [shot], FPS, H, W)
        rows.append({"id": f"v{k:03d}_000", "video_id": f"v{k:03d}", "path": str(path), "num_frames": frames,
                     "fps": FPS, "duration": frames / FPS, "width": W, "height": H, "start": 0.0,
                     "end": frames / FPS, "error": "", "keep": True, "captions": [], "truth": caption_of(shot)})
    return rows


def write_table(path: Path, rows: list[dict], rejected: int = 1) -> Path:
    """The filtered table: `rows` plus `rejected` rejected rows (which must pass through unchanged)."""
    extra = [{"id": f"rej{k}", "path": "/nonexistent.mp4", "keep": False, "reject": ["short"], "error": ""}
             for k in range(rejected)]
    write_jsonl(path, rows + extra)
    return path


def stage_cfg(**caption) -> dict:
    """The caption stage's inputs for a dataset config with these caption keys (defaults filled)."""
    ds = lvconfig.validate({"source": {"type": "synthetic"}, "caption": {"backend": "openai", **caption}},
                           "dataset.schema.yaml", "test")
    return lvconfig.stage_inputs("dataset", ds, "caption")


def server_cmd(*flags: str) -> str:
    """A caption.server.command template running the fake VLM server."""
    return " ".join([sys.executable, str(VLM_SERVER), "--port", "{port}", "--model", "{model}", *flags])


# `python -c RUNNER CFG.json TABLE OUT CACHE`: the caption stage in a process of its own
RUNNER = """
import json, logging, sys
from pathlib import Path
from longvid.caption.stage import caption_shard
logging.basicConfig(level=logging.INFO)
cfg = json.loads(Path(sys.argv[1]).read_text())
sys.exit(caption_shard(cfg, Path(sys.argv[2]), Path(sys.argv[3]), "t", cache=Path(sys.argv[4])))
"""
