"""Cuts are frame-accurate: every clip holds exactly its shot's frames, none of a neighbour's."""

import av
import numpy as np
import pytest

from longvid.ingest import synthetic
from longvid.ingest.probe import probe_file
from longvid import config
from longvid.ingest.split import plan_pieces, split_video

# the schema's defaults of the `split` section (the only place they are written)
SPLIT_DEFAULTS = config.validate({"source": {"type": "synthetic"}}, "dataset.schema.yaml", "")["split"]


def backgrounds_of(path):
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24")[1, 1].astype(int) for f in c.decode(video=0)]


def nearest_background(rgb):
    return min(synthetic.BACKGROUNDS, key=lambda k: np.abs(np.array(synthetic.BACKGROUNDS[k]) - rgb).sum())


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    d = tmp_path_factory.mktemp("src")
    shots = synthetic.plan_video(np.random.default_rng(7), 4, (1.0, 2.5), 24)
    path = d / "v.mp4"
    synthetic.render_video(path, shots, 24, 96, 128)
    row = {"id": "vid", "path": str(path), "captions": [], "meta": {"shots": shots}}
    return {**row, **probe_file(str(path))}, shots


@pytest.mark.parametrize("fps", [None, 8])
def test_clips_hold_exactly_their_shot(video, tmp_path, fps):
    row, shots = video
    out = split_video(row, tmp_path, {**SPLIT_DEFAULTS, "fps": fps, "min_scene_len": 8})
    clips = out["clips"]
    assert [(c["start_frame"], c["end_frame"]) for c in clips] == [(s["start_frame"], s["end_frame"]) for s in shots]
    for clip, shot in zip(clips, shots):
        assert not clip["error"]
        seen = {nearest_background(px) for px in backgrounds_of(clip["path"])}
        assert seen == {shot["background"]}, (clip["id"], seen)
        n = shot["end_frame"] - shot["start_frame"]
        if fps is None:
            assert clip["num_frames"] == n
        else:
            assert abs(clip["num_frames"] - n * fps / 24) <= 1


def test_long_scenes_are_split_and_short_ones_dropped():
    cfg = {**SPLIT_DEFAULTS, "max_scene_seconds": 2.0, "min_scene_seconds": 0.5, "trim_start": 1.0}
    # 10 fps: scenes of 5.1 s and 0.3 s; the trim removes the first second
    pieces = plan_pieces([(0, 51), (51, 54)], 54, 10.0, cfg)
    assert pieces == [(10, 23), (23, 37), (37, 51)]  # 41 frames -> the fewest equal pieces of <= 20
