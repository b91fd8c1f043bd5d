"""A dataset with no usable clip fails in the dataset stage with one line of counts by reason,
computed from shard tables made by the real probe, filter and caption code."""

import numpy as np
import pytest

from longvid import config
from longvid.caption.passthrough import passthrough
from longvid.dataset.build import build_dataset, empty_dataset_reason
from longvid.ingest import manifest, synthetic
from longvid.ingest.filters import score
from longvid.ingest.probe import probe_file
from longvid.io import InputError, read_jsonl, write_jsonl

DEFAULTS = config.validate({"source": {"type": "synthetic"}}, "dataset.schema.yaml", "")


def clip_of(path, captions=()) -> dict:
    """A whole video as one clip, the row split writes with `cut: false`."""
    p = probe_file(str(path))
    row = manifest.row(str(path), path, captions=list(captions), error=p["error"] or "")
    base = {"video_id": row["id"], "source_path": str(path), "captions": row["captions"], "meta": {}}
    if p["error"]:
        return {**base, "id": f"{row['id']}_err", "error": p["error"]}
    return {**base, "id": f"{row['id']}_000", "path": str(path), "start_frame": 0, "end_frame": p["num_frames"],
            "start": 0.0, "end": p["duration"], "error": "", "num_frames": p["num_frames"], "fps": p["avg_fps"],
            "width": p["width"], "height": p["height"], "duration": p["duration"]}


def shard_table(tmp_path, name: str, clips: list[dict]):
    """clips scored by the filter, kept ones captioned by passthrough (what the two stages do to each
    row), written as a captioned shard table."""
    rows = [{**c, **score(c, DEFAULTS["filter"])} for c in clips]
    rows = [{**r, **passthrough(r)} if r["keep"] else r for r in rows]
    write_jsonl(tmp_path / f"{name}.captioned.jsonl", rows)
    return tmp_path / f"{name}.captioned.jsonl"


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    for name, seconds in (("long1", 7.0), ("long2", 7.0), ("short", 4.0)):  # 56, 56, 32 frames at 8 fps
        shots = synthetic.plan_video(np.random.default_rng(0), 1, (seconds, seconds), 24)
        synthetic.render_video(d / f"{name}.mp4", shots, 24, 64, 96)
    (d / "zero.mp4").write_bytes(b"")
    return d


def test_no_usable_clip_is_one_line_of_counts(tmp_path, videos):
    uncaptioned = shard_table(tmp_path, "s0", [clip_of(videos / "long1.mp4"), clip_of(videos / "long2.mp4")])
    rest = shard_table(tmp_path, "s1", [clip_of(videos / "short.mp4", [manifest.caption("a caption")]),
                                        clip_of(videos / "zero.mp4")])
    rows = [r for t in (uncaptioned, rest) for r in read_jsonl(t)]
    assert [r["caption_error"] for r in rows if r["keep"]] == ["no source caption"] * 2  # the real stages' rows
    out = tmp_path / "data/datasets/mine"
    with pytest.raises(InputError) as e:
        build_dataset([uncaptioned, rest], out, DEFAULTS["dataset"])
    assert str(e.value) == (
        f"{out}: 0 of 4 clips kept: 2 uncaptioned — caption.backend passthrough needs source captions; "
        "1 failed in fetch/probe/split (empty file (0 bytes): 1); 1 rejected by filter (frames 32 < 49: 1)")
    assert "\n" not in str(e.value)
    assert not (out / "train.jsonl").exists()  # nothing half-written


def test_one_usable_clip_builds(tmp_path, videos):
    table = shard_table(tmp_path, "s0", [clip_of(videos / "long1.mp4", [manifest.caption("a caption")]),
                                         clip_of(videos / "short.mp4")])
    summary = build_dataset([table], tmp_path / "ds", DEFAULTS["dataset"])
    assert summary["clips"]["train"] + summary["clips"]["val"] == 1


def test_reasons_are_grouped_by_check():
    clips = ([{"keep": False, "reject_reasons": [f"frames {n} < 49"]} for n in (12, 40, 33)]
             + [{"keep": False, "reject_reasons": ["motion 0.01 < 0.2", "short side 32 < 64"]}]
             + [{"error": f"decode failed {i}", "keep": False} for i in range(5)]
             + [{"keep": True, "text": "", "caption_error": "endpoint timed out", "caption_source": "vlm"}])
    assert empty_dataset_reason(clips) == (
        "0 of 10 clips kept: 5 failed in fetch/probe/split (decode failed 0: 1, decode failed 1: 1, "
        "decode failed 2: 1, 2 more); 4 rejected by filter (frames 12..40 < 49: 3, motion 0.01 < 0.2: 1, "
        "short side 32 < 64: 1); 1 uncaptioned (endpoint timed out: 1)")
    assert empty_dataset_reason([]).startswith("0 clips kept: the shards hold no clips")
