"""Tier-1 pixel metrics and the shapes colour/direction check, on videos whose truth is known: the
synthetic generator's own renders, their reversals, frozen copies and noise."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from longvid.evaluate.shapes_check import check, expected
from longvid.evaluate.temporal import temporal_metrics
from longvid.shapes import COLORS, DIRECTIONS, caption_of, render_shot


def shot(color="red", direction="right", shape="circle", background="gray") -> dict:
    return {"shape": shape, "color": color, "direction": direction, "background": background}


def render(**kw) -> np.ndarray:
    return render_shot(shot(**kw), 33, 64, 64)


@pytest.mark.parametrize("color,direction", list(itertools.product(COLORS, DIRECTIONS)))
def test_shapes_check_agrees_with_the_generator(color, direction):
    for shape, background in (("circle", "black"), ("triangle", "white"), ("square", "teal")):
        s = shot(color, direction, shape, background)
        result = check(caption_of(s), render_shot(s, 33, 64, 64))
        assert result["color_ok"] and result["direction_ok"], result


def test_shapes_check_catches_wrong_direction_and_colour():
    video = render(color="blue", direction="up")
    reversed_ = check("a blue circle moves up on a gray background", video[::-1])
    assert reversed_["color_ok"] and not reversed_["direction_ok"]
    assert reversed_["direction"] == "down"
    recoloured = check("a red circle moves up on a gray background", video)
    assert not recoloured["color_ok"] and recoloured["color"] == "blue"
    frozen = check("a blue circle moves up on a gray background", np.repeat(video[:1], 33, axis=0))
    assert frozen["color_ok"] and frozen["direction"] is None and not frozen["direction_ok"]
    blank = check("a blue circle moves up on a gray background", np.full_like(video, 120))
    assert blank["color"] is None and not blank["color_ok"]


def test_only_prompts_in_the_synthetic_grammar_are_checked():
    assert check("a cat sleeping on a sofa", render()) is None
    assert expected("A Red Square moves left on a black background") == {
        "color": "red", "shape": "square", "direction": "left"}


def test_moving_object_vs_frozen_vs_noise():
    video = render(direction="down")
    moving = temporal_metrics(video)
    assert moving["static_fraction"] == 0.0
    assert 0.05 < moving["motion"] < 2.0
    assert moving["warp_error"] < 0.01  # the flow explains the motion

    frozen = temporal_metrics(np.repeat(video[:1], len(video), axis=0))
    assert frozen["static_fraction"] == 1.0 and frozen["flicker"] == 0.0 and frozen["motion"] < 1e-3

    noise = np.random.default_rng(0).integers(0, 256, video.shape, dtype=np.uint8)
    random = temporal_metrics(noise)
    assert random["flicker"] > 50 * moving["flicker"]
    assert random["warp_error"] > 20 * moving["warp_error"]


def test_shuffled_frames_warp_worse_than_the_real_order():
    video = render(direction="left")
    order = np.random.default_rng(1).permutation(len(video))
    assert temporal_metrics(video[order])["warp_error"] > 3 * temporal_metrics(video)["warp_error"]


def test_rejects_a_single_frame():
    with pytest.raises(ValueError, match="F >= 2"):
        temporal_metrics(render()[:1])
