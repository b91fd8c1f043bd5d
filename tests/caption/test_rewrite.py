"""caption.rewrite: the second, text-only pass through the same endpoints (the fake server's "text
model" shortens a caption to its first clause)."""

import pytest
from clipkit import render_clips, stage_cfg, write_table
from vlm_server import VLMServer

from longvid import config as lvconfig
from longvid.caption.stage import caption_shard
from longvid.io import InputError, read_jsonl


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return render_clips(tmp_path_factory.mktemp("clips"), 6)


def run(tmp_path, rows, **caption):
    table = write_table(tmp_path / "filtered.jsonl", rows)
    out = tmp_path / "captioned.jsonl"
    assert caption_shard(stage_cfg(**caption), table, out, "t", cache=tmp_path / "cache.jsonl") == 0
    return [r for r in read_jsonl(out) if r.get("keep")]


def test_captions_over_the_limit_are_rewritten_the_original_kept(tmp_path, clips):
    # the dense caption (~24 words) is over a 16-token limit; the short one (9 words) is not
    with VLMServer() as s:
        table = run(tmp_path, clips, endpoints=[s.url], max_text_tokens=16, rewrite={})
    for r, src in zip(table, clips):
        assert r["caption_status"] == "ok" and r["text"] == src["truth"]
        assert r["caps"][0].startswith(src["truth"] + ", from") and r["caps"][-1] == src["truth"]
        assert "rewritten" in r["caption_flags"] and "over_t5" not in r["caption_flags"]
        assert r["caption_tokens"]["rewrite"]["completion"] == len(src["truth"].split())
        assert r["caption_attempts"] == 2
    texts = [e for e in s.log if e.get("mode") == "text"]
    assert len(texts) == len(clips) and all(e["prompt"].startswith("Rewrite this") for e in texts)


def test_only_over_limit_unless_always(tmp_path, clips):
    with VLMServer() as s:
        table = run(tmp_path, clips[:2], endpoints=[s.url], rewrite={})  # 226 tokens: nothing over
    assert not [e for e in s.log if e.get("mode") == "text"]
    assert all("rewritten" not in r["caption_flags"] for r in table)
    with VLMServer() as s:
        table = run(tmp_path / "always", clips[:2], endpoints=[s.url], structured=True, rewrite={"when": "always"})
    assert len([e for e in s.log if e.get("mode") == "text"]) == 2
    assert all("rewritten" in r["caption_flags"] for r in table)


def test_transient_faults_retried_a_failed_rewrite_keeps_the_caption(tmp_path, clips):
    with VLMServer(fail_rate=0.3) as s:
        table = run(tmp_path, clips, endpoints=[s.url], max_text_tokens=16, backoff=0.01, rewrite={})
    assert all(r["text"] == src["truth"] for r, src in zip(table, clips))
    assert s.stats["error_500"] > 0
    with VLMServer() as s:  # a model the server does not have: a deterministic 404, not retried
        table = run(tmp_path / "b", clips[:3], endpoints=[s.url], max_text_tokens=16,
                    rewrite={"model": "no-such-model"})
    for r in table:
        assert r["caption_status"] == "ok" and r["text"] == r["caps"][0] and ", from" in r["text"]
        assert "rewrite_failed" in r["caption_flags"] and "rewrite failed:" in r["caption_note"]
        assert "no-such-model" in r["caption_note"] and "\n" not in r["caption_note"]
    assert s.stats["error_404"] == 3


def test_rewrite_needs_backend_openai_at_resolve_time():
    with pytest.raises(InputError, match=r"shapes\.yaml: caption\.rewrite: the rewrite pass needs backend openai"):
        lvconfig.dataset("shapes", {"caption": {"rewrite": {}}})
    with pytest.raises(InputError, match=r"caption\.transformers\.path: backend transformers needs a model"):
        lvconfig.dataset("shapes", {"caption": {"backend": "transformers"}})
