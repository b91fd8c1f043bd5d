"""Backend `transformers`: a tiny random Qwen2.5-VL built by the test, run on rendered clips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import clipkit
import tiny_qwen
from longvid.caption.frames import Frames
from longvid.caption.stage import caption_shard
from longvid.io import InputError, read_jsonl


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_qwen.build(tmp_path_factory.mktemp("tiny-qwen"))


@pytest.fixture(scope="module")
def vlm(model_dir):
    from longvid.caption.local_vlm import LocalVLM

    return LocalVLM(str(model_dir), "cpu", "float32")


def reference_video_patches(rgb: np.ndarray, mean, std, patch=14, merge=2, tpatch=2) -> np.ndarray:
    """Qwen2-VL's video patch layout written out from its definition: normalised frames grouped by
    `tpatch` in time, rows ordered (t, h-block, w-block, h-in-block, w-in-block), each patch flattened
    as (channel, time, y, x)."""
    x = (rgb.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    x = x.transpose(0, 3, 1, 2)  # n, C, H, W
    n, c, h, w = x.shape
    gt, gh, gw = n // tpatch, h // patch, w // patch
    x = x.reshape(gt, tpatch, c, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(gt * gh * gw, c * tpatch * patch * patch)


def test_video_patches_match_qwen_layout(vlm):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (6, 56, 84, 3), dtype=np.uint8)
    patches, grid = vlm.video_patches(rgb)
    assert grid == [3, 4, 6]
    ref = reference_video_patches(rgb, vlm.images.image_mean, vlm.images.image_std)
    np.testing.assert_allclose(patches, ref, atol=1e-5)
    with pytest.raises(ValueError, match="multiple of 2 frames"):
        vlm.video_patches(rgb[:5])


def frames_of(rgb: np.ndarray, fps: float = 8.0) -> Frames:
    n, h, w = rgb.shape[:3]
    return Frames(list(range(0, 2 * n, 2)), w, h, fps, 2 * n, 2 * n / fps, rgb=rgb)


def test_batched_generation_equals_one_by_one(vlm):
    """Left padding and per-row 3-D positions: a clip's greedy answer does not depend on its batch."""
    rng = np.random.default_rng(1)
    a = frames_of(rng.integers(0, 256, (4, 56, 56, 3), dtype=np.uint8))
    b = frames_of(rng.integers(0, 256, (8, 56, 84, 3), dtype=np.uint8))  # longer prompt: a is padded
    alone = [vlm.generate([f], "describe", 12, 0.0, 1.0, 0)[0] for f in (a, b)]
    together = vlm.generate([a, b], "describe", 12, 0.0, 1.0, 0)
    assert [x.content for x in together] == [x.content for x in alone]
    assert together[0].usage["prompt_tokens"] < together[1].usage["prompt_tokens"]
    # 4 frames of 56x56: 2 temporal patches x (4 x 4 patches) / merge 2x2 = 8 video tokens
    assert alone[1].usage["prompt_tokens"] - alone[0].usage["prompt_tokens"] == 4 * 4 * 6 // 4 - 8
    assert all(x.finish_reason in ("stop", "length") for x in together)


def run_stage(tmp_path: Path, model: str, rows: list[dict], **caption) -> list[dict]:
    table = clipkit.write_table(tmp_path / "clips.jsonl", rows)
    cfg = clipkit.stage_cfg(backend="transformers", max_pixels=56 * 84, max_tokens=16,
                            transformers={"path": model, "batch_size": 2, "device": "cpu"}, **caption)
    out = tmp_path / "captioned.jsonl"
    assert caption_shard(cfg, table, out, "t", cache=tmp_path / "cache.jsonl") == 0
    return list(read_jsonl(out))


def test_stage_captions_every_kept_clip_and_resumes_from_cache(tmp_path, model_dir, monkeypatch):
    rows = clipkit.render_clips(tmp_path / "clips", 3)
    rows.append({**rows[0], "id": "broken", "path": str(tmp_path / "missing.mp4")})
    out = run_stage(tmp_path, str(model_dir), rows)
    by_id = {r["id"]: r for r in out}
    assert set(by_id) == {r["id"] for r in rows} | {"rej0"}
    assert by_id["rej0"].get("caption_status") is None  # rejected rows pass through unchanged
    assert by_id["broken"]["caption_status"] == "error" and "decode failed" in by_id["broken"]["caption_error"]
    for r in rows[:3]:
        got = by_id[r["id"]]
        assert got["caption_source"] == "transformers" and got["caption_model"] == str(model_dir)
        assert got["caption_status"] in ("ok", "truncated", "error"), got
        assert got["caption_frames"]["count"] == 4 and got["caption_frames"]["width"] % 28 == 0
        assert got["caption_tokens"]["prompt"] > 8 and got["caption_attempts"] >= 1
        assert (got["text"] != "") == (got["caption_status"] != "error")
    # a rerun needs no model: every clip is in the cache
    from longvid.caption import local_vlm

    def no_load(*a, **k):
        raise AssertionError("the model was loaded for a fully cached shard")

    monkeypatch.setattr(local_vlm, "LocalVLM", no_load)
    again = run_stage(tmp_path, str(model_dir), rows)
    assert again == out
    lines = (tmp_path / "cache.jsonl").read_text().splitlines()
    assert len(lines) == 4 and len({json.loads(x)["id"] for x in lines}) == 4


def test_bad_model_settings_are_one_line_errors(tmp_path, model_dir):
    rows = clipkit.render_clips(tmp_path / "clips", 1)
    with pytest.raises(InputError, match=r"caption\.transformers\.path: backend transformers needs"):
        run_stage(tmp_path, None, rows)
    with pytest.raises(InputError, match=r"caption\.transformers\.path: .*not a Hugging Face model directory"):
        run_stage(tmp_path, str(tmp_path / "nowhere"), rows)
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(InputError, match="is a 'bert' model; the transformers backend runs qwen2_vl"):
        run_stage(tmp_path, str(other), rows)
