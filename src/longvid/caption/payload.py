"""The chat-completions request body for one clip, and the caption(s) read back from the answer.

One user message: the visual part(s), then the prompt. `mode` (caption.mode) decides the visual part:

* `video_frames`: one `video_url` part `data:video/jpeg;base64,<f1>,<f2>,...` (the frames the client
  decoded) plus request-level `media_io_kwargs: {video: {fps, frames_indices, total_num_frames,
  duration}}` so the model keeps the real timing, and `mm_processor_kwargs: {do_sample_frames: false}`
  (Qwen3-VL must not resample them). vLLM's format for pre-extracted frames.
* `image_list`: one `image_url` part per frame (portable: SGLang, hosted APIs, InternVL).
* `video_file`: the clip file as one `video_url` part `data:video/mp4;base64,...` (the server samples).

`caption.structured` asks for a JSON object {"dense": ..., "short": ...} (response_format
json_object, and the prompt says so); `parse_answer` reads it back leniently (a JSON object inside
prose or code fences; fields of a cut-off object).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re

from longvid.caption.frames import Frames

PROMPTS = {
    "detailed": (
        "Describe this video in detail for a text-to-video training caption: the main subjects and their "
        "appearance, what they do and how they move, the background and setting, colours, lighting, and any "
        "camera motion, in the order things happen. Write plain sentences about what is visible only; do not "
        "start with \"The video shows\" or similar, do not guess or hedge, and do not repeat yourself."),
    "short": (
        "Describe this video in one or two sentences for a text-to-video training caption: the main subject, "
        "its motion and the setting. Describe only what is visible and do not start with \"The video shows\"."),
}
# A T5 token is about 0.75 words on caption text (quality.t5_estimate's 1.3 pieces per word).
WORDS_PER_T5_TOKEN = 0.75


def prompt_text(cfg: dict) -> str:
    """The prompt sent: a named one, or caption.prompt itself; with `structured` the JSON instruction."""
    text = PROMPTS.get(cfg["prompt"], cfg["prompt"])
    if cfg["structured"]:
        words = int(cfg["max_text_tokens"] * WORDS_PER_T5_TOKEN * 0.9)
        text += ("\n\nAnswer with a JSON object and nothing else: {\"dense\": \"<a detailed description, several "
                 "sentences>\", \"short\": \"<the same video in one or two sentences, at most "
                 f"{words} words>\"}}.")
    return text


def prompt_id(cfg: dict) -> str:
    """What the stored caption_prompt says: the named prompt, or `literal:<hash>` of a literal one."""
    name = cfg["prompt"] if cfg["prompt"] in PROMPTS else \
        "literal:" + hashlib.sha1(cfg["prompt"].encode()).hexdigest()[:10]
    return name + ("+json" if cfg["structured"] else "")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def visual_parts(frames: Frames, mode: str) -> list[dict]:
    if mode == "video_file":
        data = frames.b64[0] if frames.b64 else b64(frames.video or b"")
        return [{"type": "video_url", "video_url": {"url": "data:video/mp4;base64," + data}}]
    images = frames.b64 if len(frames.b64) == len(frames.jpegs) else [b64(j) for j in frames.jpegs]
    if mode == "video_frames":
        return [{"type": "video_url", "video_url": {"url": "data:video/jpeg;base64," + ",".join(images)}}]
    if mode == "image_list":
        return [{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + i}} for i in images]
    raise ValueError(f"caption.mode {mode!r} is unknown")


def build_body(cfg: dict, model: str, frames: Frames, temperature: float, seed: int) -> dict:
    """The JSON body of POST /v1/chat/completions for one clip."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": [*visual_parts(frames, cfg["mode"]),
                                                  {"type": "text", "text": prompt_text(cfg)}]}],
        "temperature": temperature,
        "top_p": cfg["top_p"],
        "max_tokens": cfg["max_tokens"],
        "seed": seed,
    }
    if cfg["mode"] == "video_frames":
        body["media_io_kwargs"] = {"video": {
            "fps": frames.src_fps,
            "frames_indices": [i - frames.first for i in frames.indices],
            "total_num_frames": frames.total_num_frames,
            "duration": round(frames.duration, 6),
        }}
        body["mm_processor_kwargs"] = {"do_sample_frames": False}
    if cfg["structured"]:
        body["response_format"] = {"type": "json_object"}
    return body


_FIELD = r'"{key}"\s*:\s*"((?:[^"\\]|\\.)*)(?:"|$)'


def _unescape(s: str) -> str:
    try:
        return json.loads(f'"{s}"')
    except json.JSONDecodeError:
        return s.replace('\\"', '"').replace("\\n", " ")


def parse_structured(content: str) -> dict[str, str] | None:
    """{"dense", "short"} from a structured answer, or None. Accepts the object inside prose or
    ```json fences, and (a cut-off answer) the string fields found before the cut."""
    m = re.search(r"\{.*\}", content, re.S)
    if m:
        try:
            obj = json.loads(m.group())
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            got = {k: obj.get(k) for k in ("dense", "short")}
            if all(isinstance(v, str) for v in got.values()):
                return got
    got = {}
    for key in ("dense", "short"):
        f = re.search(_FIELD.format(key=key), content, re.S)
        if f:
            got[key] = _unescape(f.group(1))
    return got or None


def parse_answer(cfg: dict, content: str | None) -> dict[str, str] | None:
    """The caption(s) of an answer: {"caption": text} or, structured, {"dense", "short"} (one may
    be missing from a cut-off answer); None when a structured answer holds no caption field."""
    content = content or ""
    if not cfg["structured"]:
        return {"caption": content}
    return parse_structured(content)
