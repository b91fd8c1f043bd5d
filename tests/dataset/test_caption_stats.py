"""Caption quality in the dataset stats: word and T5-token distributions, the captions over the text
encoder's limit (exact boundaries), the caption status counts, the limit read from the stage config,
and the caption_tokens.png plot."""

from __future__ import annotations

import json

import pytest

from longvid import config
from longvid.caption import quality
from longvid.caption.captioner import record
from longvid.caption.shard import captioned_row
from longvid.dataset import stats
from longvid.dataset.build import build_dataset, build_from_shards
from longvid.io import write_jsonl

DEFAULTS = config.validate({"source": {"type": "synthetic"}}, "dataset.schema.yaml", "")


@pytest.fixture(autouse=True)
def no_tokenizer(monkeypatch):
    """The caption stage's counts are estimates here, whatever the local Hugging Face cache holds."""
    monkeypatch.setattr(quality, "_t5_tokenizer", lambda: None)


@pytest.mark.parametrize("text", ["", "  ", "a", "A red ball rolls left, then stops.", "It's a well-known "
                                  "shot: 3 cats (black & white) — on a sofa!", "Überraschung… naïve café; 100%?"])
def test_estimate_is_the_caption_stages(text):
    assert stats.t5_estimate(text) == quality.t5_estimate(text)


def row(i: int, text: str) -> dict:
    return {"id": f"c{i}", "text": text, "duration": 2.0, "num_frames": 49, "width": 64, "height": 48}


def openai_clip(i: int, text: str, t5: int | None = None, status: str = "ok", exact: bool = True) -> dict:
    """A kept clip's shard row as the openai backend writes it; `t5` overrides its T5 count."""
    rec = record({"id": f"c{i}"}, DEFAULTS["caption"], status, "", None, 1, caps=[text] if text else [], text=text)
    if t5 is not None:
        rec["tokens"] = {"prompt": 900, "completion": 80, ("t5" if exact else "t5_est"): t5}
    return captioned_row({"id": f"c{i}", "keep": True}, rec)


def test_estimates_without_caption_stage_counts():
    # ceil(1.3 x words + punctuation) + 1: "a b c" 5, "a b c." 6, "a b c d" 7
    rows = [row(0, "a b c"), row(1, "a b c."), row(2, "a b c d")]
    s = stats.compute(rows[:2], rows[2:], [{"id": r["id"], "keep": True} for r in rows], max_text_tokens=5)
    assert s["caption_words"] == {"count": 3, "mean": 10 / 3, "min": 3.0, "max": 4.0, "p50": 3.0,
                                  "p90": pytest.approx(3.8), "total": 10.0}
    assert s["caption_t5_tokens"]["count"] == 3
    assert (s["caption_t5_tokens"]["min"], s["caption_t5_tokens"]["max"], s["caption_t5_tokens"]["total"]) == \
        (5.0, 7.0, 18.0)
    assert s["caption_tokens"] == {"limit": 5, "t5_exact": False, "over": 2, "captions": 3, "share_over": 2 / 3}
    assert s["caption_status"] == {}  # passthrough-like rows carry no status


def test_counts_of_the_caption_stage_and_the_limit_boundary():
    texts = ["one", "two", "three", "four"]
    t5 = [225, 226, 227, 400]  # the limit itself fits; one over does not
    clips = [openai_clip(i, t, n) for i, (t, n) in enumerate(zip(texts, t5))]
    clips += [openai_clip(4, "", status="error"), openai_clip(5, "cut", 10, status="truncated"),
              {**openai_clip(6, "x", 999, status="blocked"), "keep": False}]  # rejected: not counted
    rows = [row(i, c["text"]) for i, c in enumerate(clips) if c["text"] and c["keep"]]
    s = stats.compute(rows[:3], rows[3:], clips, max_text_tokens=226)
    assert s["caption_t5_tokens"]["min"] == 10.0 and s["caption_t5_tokens"]["max"] == 400.0
    assert s["caption_tokens"] == {"limit": 226, "t5_exact": True, "over": 2, "captions": 5, "share_over": 0.4}
    assert s["caption_status"] == {"ok": 4, "truncated": 1, "error": 1}
    assert list(s["caption_status"]) == ["ok", "truncated", "error"]  # status order, not count order


def test_one_estimated_count_makes_the_share_estimated():
    clips = [openai_clip(0, "a b", 226), openai_clip(1, "c d", 227, exact=False)]
    s = stats.compute([row(0, "a b"), row(1, "c d")], [], clips)
    assert s["caption_tokens"] == {"limit": 226, "t5_exact": False, "over": 1, "captions": 2, "share_over": 0.5}


def test_real_record_counts_are_used():
    text = "A red ball rolls left, then stops."
    clip = openai_clip(0, text)
    assert clip["caption_tokens"]["t5_est"] == quality.t5_estimate(text)
    s = stats.compute([row(0, text)], [], [clip])
    assert s["caption_t5_tokens"]["max"] == quality.t5_estimate(text)
    assert s["caption_tokens"]["over"] == 0 and s["caption_tokens"]["t5_exact"] is False


def test_limit_from_the_stage_config():
    assert stats.text_token_limit({"dataset": DEFAULTS["dataset"]}) == 226  # the dataset stage's inputs today
    assert stats.text_token_limit({"dataset": DEFAULTS["dataset"], "caption": {"max_text_tokens": 77}}) == 77
    assert stats.text_token_limit({"dataset": {}, "caption": DEFAULTS["caption"]}) == 226


def shard_rows(tmp_path, texts: list[str]) -> list[dict]:
    rows = []
    for i, text in enumerate(texts):
        clip = tmp_path / "clips" / f"v{i}.mp4"
        clip.parent.mkdir(exist_ok=True)
        clip.write_bytes(b"not decoded by the dataset stage")
        rows.append({"id": f"v{i}_000", "video_id": f"v{i}", "source_path": str(clip), "path": str(clip),
                     "keep": True, "caps": [text], "text": text, "caption_error": "", "duration": 2.0 + i,
                     "num_frames": 49 + i, "width": 64, "height": 48, "fps": 24.0, "start": 0.0, "end": 2.0})
    return rows


@pytest.mark.parametrize("caption, limit", [(None, 226), ({"max_text_tokens": 6}, 6)])
def test_dataset_stage_writes_caption_stats_and_plot(tmp_path, caption, limit):
    texts = ["a b c", "a b c d", "a b c d e f g h"]  # 5, 7, 12 T5 tokens (estimated)
    shard = tmp_path / "shards" / "s0"
    shard.mkdir(parents=True)
    write_jsonl(shard / "captioned.jsonl", shard_rows(tmp_path, texts))
    (tmp_path / "shards" / "shards.json").write_text(json.dumps({"shards": ["s0"]}))
    cfg = {"dataset": DEFAULTS["dataset"], "stage_version": 1, **({"caption": caption} if caption else {})}
    out = tmp_path / "ds"
    assert build_from_shards(cfg, tmp_path / "shards" / "shards.json", out, "ds") == 0
    s = json.loads((out / "stats.json").read_text())
    over = sum(n > limit for n in (5, 7, 12))
    assert s["caption_tokens"] == {"limit": limit, "t5_exact": False, "over": over, "captions": 3,
                                   "share_over": over / 3}
    assert s["caption_t5_tokens"]["total"] == 24.0 and s["caption_words"]["total"] == 15.0
    assert {p.name for p in (out / "stats").glob("*.png")} == {"duration.png", "num_frames.png",
                                                               "caption_tokens.png", "resolution.png"}
    assert (out / "stats" / "caption_tokens.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_build_dataset_defaults_to_the_schema_limit(tmp_path):
    write_jsonl(tmp_path / "t.jsonl", shard_rows(tmp_path, ["a " * 200]))  # 261 estimated tokens
    s = build_dataset([tmp_path / "t.jsonl"], tmp_path / "ds", DEFAULTS["dataset"])
    assert s["caption_tokens"]["limit"] == DEFAULTS["caption"]["max_text_tokens"] == 226
    assert s["caption_tokens"]["over"] == 1
