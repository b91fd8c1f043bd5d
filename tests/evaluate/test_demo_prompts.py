"""The demo's evaluation prompts (config/prompts/shapes.txt) ask for combinations the model never saw:
every direction with every colour, none of them a caption the `shapes` generator renders."""

from pathlib import Path

import numpy as np

from longvid import config as lvconfig
from longvid.evaluate.shapes_check import expected
from longvid.ingest.synthetic import plan_video
from longvid.shapes import COLORS, DIRECTIONS, caption_of

ROOT = Path(__file__).resolve().parents[2]


def generated_captions(source: dict) -> set[str]:
    """Every shot caption the synthetic source renders, replaying its planner (no video written)."""
    rng = np.random.default_rng(source["seed"])
    shots = [s for _ in range(source["num_videos"])
             for s in plan_video(rng, source["shots_per_video"], tuple(source["shot_seconds"]), source["fps"])]
    return {caption_of(s) for s in shots}


def test_demo_prompts_are_held_out_and_cover_every_colour_and_direction():
    prompts = (ROOT / "config/prompts/shapes.txt").read_text().splitlines()
    wanted = [expected(p) for p in prompts]
    assert all(wanted), [p for p, w in zip(prompts, wanted) if not w]
    assert {(w["color"], w["direction"]) for w in wanted} == {(c, d) for c in COLORS for d in DIRECTIONS}
    source = lvconfig.source(lvconfig.dataset("shapes")["source"])
    seen = generated_captions(source)
    assert len(seen) > 50  # the replay really enumerates the dataset's captions
    assert not seen & set(prompts)
