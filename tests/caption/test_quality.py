"""Caption gates (empty, truncated, loops, boilerplate), T5 length, request bodies, error classes, the cache."""

import json
import random

import pytest
from clipkit import stage_cfg

from longvid.caption import payload, quality
from longvid.caption.cache import CaptionCache, clip_fingerprint, settings_fingerprint
from longvid.caption.captioner import caption_texts, final_status
from longvid.caption.errors import backoff_delay, classify, retry_after_seconds
from longvid.caption.frames import Frames

CFG = stage_cfg()["caption"]


@pytest.mark.parametrize("raw,want", [
    ("The video shows a red circle moving left.", "A red circle moving left."),
    ("The video depicts two dogs.", "Two dogs."),
    ("In this video, we see a blue square.", "A blue square."),
    ("This video features a cat", "A cat"),
    ("The clip captures the sea at dusk.", "The sea at dusk."),
    ("The video begins with a man walking.", "A man walking."),
    ("Video of a dog running", "A dog running"),
    ("The video is a close-up of a face.", "A close-up of a face."),
])
def test_boilerplate_cleaned_and_capitalised(raw, want):
    assert quality.clean_boilerplate(raw) == (want, True)


@pytest.mark.parametrize("text", ["a red circle moves left on a black background", "Videos of cats are popular.",
                                  "The videographer walks in.", "A man shows a card to the camera."])
def test_no_boilerplate_left_alone(text):
    assert quality.clean_boilerplate(text) == (text, False)


def test_repetition_loops_found_and_cut():
    loop = "A red circle moves left. " + "The circle moves on. " * 12
    v = quality.assess(loop, "length", 226)
    assert "repetition" in v.flags and "truncated" in v.flags and v.text == "A red circle moves left. The circle moves on."
    assert quality.loop_start("nice " * 5 + "day") == 5  # one word five times: the first one is kept
    assert quality.loop_start("x" * 40) == 0
    assert quality.loop_start(" ".join(f"w{i % 7}" for i in range(100))) is not None  # 7-word cycle
    fine = ("A woman in a red coat walks along a wet street at night while cars pass on the left and a man in a "
            "red coat waits on the right beside a shop window full of lights.")
    assert quality.loop_start(fine) is None and quality.loop_start("very very nice") is None


def test_assess_flags():
    assert quality.assess("", "stop", 226).flags == ["empty"]
    assert quality.assess(None, "stop", 226).bad
    v = quality.assess("The video shows a red circle.", "stop", 226)
    assert v.text == "A red circle." and v.flags == ["boilerplate"] and not v.bad and v.words == 3
    long = " ".join(f"word{i}" for i in range(200))
    assert quality.assess(long, "stop", 226).flags == ["over_t5"]
    assert quality.assess("a cat", "length", 226).flags == ["truncated"]


def test_t5_estimate_formula():
    assert quality.t5_estimate("") == 0
    assert quality.t5_estimate("a red circle") == 5  # ceil(3 * 1.3) + 1
    assert quality.t5_estimate("a red circle, moving left.") == 10  # ceil(5 * 1.3 + 2) + 1
    n, exact = quality.t5_tokens("a red circle")
    assert n == 5 and exact is False  # no T5 tokenizer files on this machine: an estimate


def frames(n=4):
    return Frames(list(range(10, 10 + 2 * n, 2)), 112, 84, 8.0, 40, 5.0, jpegs=[b"\xff\xd8x"] * n, first=10)


def test_video_frames_body_has_timing_metadata():
    body = payload.build_body(CFG, "m", frames(), 0.1, 3)
    content = body["messages"][0]["content"]
    assert [p["type"] for p in content] == ["video_url", "text"]
    url = content[0]["video_url"]["url"]
    assert url.startswith("data:video/jpeg;base64,") and url.count(",") == 4
    assert body["media_io_kwargs"]["video"] == {"fps": 8.0, "frames_indices": [0, 2, 4, 6], "total_num_frames": 40,
                                                "duration": 5.0}
    assert body["mm_processor_kwargs"] == {"do_sample_frames": False}
    assert (body["model"], body["temperature"], body["seed"], body["max_tokens"]) == ("m", 0.1, 3, 512)
    assert "response_format" not in body and content[1]["text"] == payload.PROMPTS["detailed"]


def test_image_list_and_video_file_bodies():
    body = payload.build_body({**CFG, "mode": "image_list"}, "m", frames(3), 0.1, 0)
    parts = body["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["image_url"] * 3 + ["text"] and "media_io_kwargs" not in body
    f = Frames([], 112, 84, 8.0, 40, 5.0, video=b"mp4bytes")
    body = payload.build_body({**CFG, "mode": "video_file"}, "m", f, 0.1, 0)
    assert body["messages"][0]["content"][0]["video_url"]["url"] == "data:video/mp4;base64,bXA0Ynl0ZXM="


def test_prompts_and_structured():
    cfg = {**CFG, "prompt": "Say what moves.", "structured": True}
    body = payload.build_body(cfg, "m", frames(), 0.1, 0)
    assert body["response_format"] == {"type": "json_object"}
    assert body["messages"][0]["content"][-1]["text"].startswith("Say what moves.")
    assert '"dense"' in payload.prompt_text(cfg) and payload.prompt_id(cfg).startswith("literal:")
    assert payload.prompt_id({**CFG, "prompt": "short"}) == "short"
    good = json.dumps({"dense": "The video shows a long text.", "short": "a cat"})
    caps, text, flags = caption_texts(cfg, "```json\n" + good + "\n```", "stop")
    assert caps == ["A long text.", "a cat"] and text == "a cat" and flags == ["boilerplate"]
    caps, text, flags = caption_texts({**cfg, "text": "dense"}, good, "stop")
    assert text == "A long text."
    cut = '{"dense": "a red circle moves left on a bl'  # finish_reason length mid-object
    caps, text, flags = caption_texts(cfg, cut, "length")
    assert caps == ["a red circle moves left on a bl"] and text == caps[0] and "text_fallback" in flags
    assert final_status(flags, "length")[0] == "truncated"
    caps, text, flags = caption_texts(cfg, "I cannot help", "stop")
    assert "not_json" in flags and final_status(flags, "stop") == ("error", "answer is not the requested JSON object")


@pytest.mark.parametrize("status,text,retry,shrink", [
    (400, '{"error": {"message": "video item with length 900 exceeds the pre-allocated encoder cache size 450"}}',
     False, True),
    (400, '{"error": {"message": "This model\'s maximum context length is 32768 tokens"}}', False, True),
    (400, '{"error": {"message": "temperature: invalid"}}', False, False),
    (401, "Unauthorized", False, False), (403, "", False, False), (404, "no model", False, False),
    (408, "", True, False), (429, "slow down", True, False), (500, "Internal server error", True, False),
    (500, "timestamps length (30) should be equal video length (8)", False, False),
    (502, "", True, False), (503, "warming up", True, False), (504, "", True, False),
])
def test_classify(status, text, retry, shrink):
    e = classify(status, text)
    assert (e.retry, e.shrink, e.status) == (retry, shrink, status) and "\n" not in str(e)


def test_retry_after_and_backoff():
    assert retry_after_seconds({"Retry-After": "2"}) == 2.0
    assert retry_after_seconds({"retry-after-ms": "1500", "Retry-After": "2"}) == 1.5
    assert retry_after_seconds({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) is None
    assert classify(429, "", {"Retry-After": "3"}).retry_after == 3.0
    rng = random.Random(0)
    delays = [backoff_delay(k, 0.5, None, rng) for k in range(1, 12)]
    assert all(0 <= d <= min(30, 0.5 * 2 ** (k - 1)) for k, d in zip(range(1, 12), delays))
    assert max(backoff_delay(20, 0.5, None, rng) for _ in range(50)) <= 30
    assert backoff_delay(1, 0.5, 7.0) == 7.0 and backoff_delay(1, 0.5, 600.0) == 60.0


def test_cache_round_trip_torn_line_and_fingerprints(tmp_path):
    clip = tmp_path / "c.mp4"
    clip.write_bytes(b"x" * 10)
    row = {"id": "c", "path": str(clip)}
    fp = clip_fingerprint(settings_fingerprint(CFG, 1), row)
    path = tmp_path / "cache" / "s0.jsonl"
    with CaptionCache(path) as cc:
        assert cc.get("c", fp) is None
        cc.put({"id": "c", "status": "ok", "text": "a"}, fp)
        cc.put({"id": "d", "status": "error", "transient": True}, fp)
        with pytest.raises(RuntimeError, match="locked"):
            CaptionCache(path)  # one job per shard
    with open(path, "ab") as f:
        f.write(b'{"id": "e", "status": "o')  # killed mid-write
    with CaptionCache(path) as cc:
        assert cc.get("c", fp)["text"] == "a"
        assert cc.get("d", fp) is None  # a transient error is captioned again
        assert "e" not in cc.entries
        cc.put({"id": "e", "status": "ok"}, fp)
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["c", "d", "e"]
    assert clip_fingerprint(settings_fingerprint({**CFG, "prompt": "short"}, 1), row) != fp
    assert clip_fingerprint(settings_fingerprint({**CFG, "concurrency": 99, "endpoints": ["http://x/v1"]}, 1),
                            row) == fp  # how it is reached does not change a caption
    clip.write_bytes(b"y" * 11)  # a re-cut clip is captioned again
    assert clip_fingerprint(settings_fingerprint(CFG, 1), row) != fp
