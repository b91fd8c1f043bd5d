"""The fake VLM server itself (vlm_server.py): it speaks the chat-completions protocol over real HTTP,
its caption describes the frames it is sent, each injected fault does what its docstring says, and
the subprocess mode starts, answers and exits on SIGTERM. Plain urllib, so no client code is trusted."""

from __future__ import annotations

import base64
import http.client
import io
import itertools
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from vlm_media import describe
from vlm_server import MODEL, VLMServer, dead_url

from longvid.shapes import BACKGROUNDS, COLORS, DIRECTIONS, SHAPES, caption_of, render_shot, render_video

SCRIPT = Path(__file__).with_name("vlm_server.py")
SHOT = {"shape": "circle", "color": "red", "direction": "left", "background": "black"}
H, W = 64, 96


def jpeg(frame: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def media(shot: dict = SHOT, mode: str = "video_frames", n: int = 8, tmp: Path | None = None) -> list[dict]:
    if mode == "video_file":
        render_video(tmp / "clip.mp4", [{**shot, "start_frame": 0, "end_frame": 2 * n}], 8.0, H, W)
        url = "data:video/mp4;base64," + b64((tmp / "clip.mp4").read_bytes())
        return [{"type": "video_url", "video_url": {"url": url}}]
    frames = [jpeg(f) for f in render_shot(shot, n, H, W)]
    if mode == "image_list":
        return [{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + b64(j)}} for j in frames]
    return [{"type": "video_url", "video_url": {"url": "data:video/jpeg;base64," + ",".join(map(b64, frames))}}]


def body(parts: list[dict] | None = None, text: str = "Describe this video.", **kw) -> dict:
    parts = media() if parts is None else parts
    return {"model": MODEL, "messages": [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}],
            "max_tokens": 200, **kw}


def call(url: str, data: dict | bytes | None = None, headers: dict | None = None, timeout: float = 10):
    """(status, headers, body bytes) of one request; HTTP errors are answers, not exceptions."""
    if isinstance(data, dict):
        data = json.dumps(data).encode()
    req = urllib.request.Request(url, data, {"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def chat(server: VLMServer, payload: dict | None = None, **kw):
    status, headers, raw = call(server.url + "/chat/completions", body() if payload is None else payload, **kw)
    try:
        return status, headers, json.loads(raw)
    except ValueError:
        return status, headers, raw


def content(answer: dict) -> str:
    return answer["choices"][0]["message"]["content"]


def test_protocol_routes():
    with VLMServer() as s:
        status, _, raw = call(s.url + "/models")
        assert status == 200 and json.loads(raw)["data"][0]["id"] == MODEL
        assert call(s.root + "/health")[0] == 200
        assert b"vllm:num_requests_running" in call(s.root + "/metrics")[2]
        status, _, ans = chat(s)
        assert status == 200 and ans["object"] == "chat.completion" and ans["model"] == MODEL
        assert ans["choices"][0]["finish_reason"] == "stop"
        assert set(ans["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}
        assert s.stats["ok"] == 1 and s.log[0]["mode"] == "video_frames" and s.log[0]["frames"] == 8


@pytest.mark.parametrize("mode, shot", [
    ("video_frames", SHOT),
    ("image_list", {"shape": "square", "color": "blue", "direction": "up", "background": "gray"}),
    ("video_file", {"shape": "triangle", "color": "green", "direction": "right", "background": "teal"})])
def test_caption_names_the_shot(mode, shot, tmp_path):
    with VLMServer() as s:
        status, _, ans = chat(s, body(media(shot, mode, tmp=tmp_path)))
    assert status == 200 and content(ans).startswith(caption_of(shot)), content(ans)
    assert s.log[0]["mode"] == mode


def test_describe_every_shot_through_jpeg():
    for shape, color, way, bg in itertools.product(SHAPES, COLORS, DIRECTIONS, BACKGROUNDS):
        shot = {"shape": shape, "color": color, "direction": way, "background": bg}
        frames = [np.asarray(Image.open(io.BytesIO(jpeg(f)))) for f in render_shot(shot, 4, 48, 64)]
        assert describe(frames)[0] == caption_of(shot)
    plain = np.full((4, 32, 32, 3), (200, 30, 30), np.uint8)  # no object: the mean-colour fallback
    assert describe(list(plain))[0] == "a video of 4 frames, mostly red (200,30,30)"


def test_visual_tokens_images_cost_twice_a_video():
    with VLMServer() as s:
        video = chat(s, body(media(mode="video_frames"), text="one two three"))[2]["usage"]
        images = chat(s, body(media(mode="image_list"), text="one two three"))[2]["usage"]
    per_frame = 3 * 4  # ceil(64/28) * ceil(96/28)
    assert video["prompt_tokens"] == 3 + 4 * per_frame and images["prompt_tokens"] == 3 + 8 * per_frame
    assert video["total_tokens"] == video["prompt_tokens"] + video["completion_tokens"]


def test_max_tokens_and_json_mode():
    with VLMServer() as s:
        ans = chat(s, body(max_tokens=3))[2]
        assert len(content(ans).split()) == 3 and ans["choices"][0]["finish_reason"] == "length"
        assert ans["usage"]["completion_tokens"] == 3 and s.stats["length"] == 1
        ans = chat(s, body(response_format={"type": "json_object"}))[2]
        caps = json.loads(content(ans))
        assert caps["short"] == caption_of(SHOT) and caps["dense"].startswith(caps["short"] + ",")


def test_validation_errors_are_openai_style(tmp_path):
    with VLMServer() as s:
        status, _, ans = chat(s, {**body(), "model": "other"})
        assert status == 404 and set(ans["error"]) >= {"message", "type", "code"} and ans["error"]["code"] == 404
        bad_frames = [{"type": "video_url", "video_url": {"url": "data:video/jpeg;base64,bm90IGEganBlZw=="}}]
        odd = [{"model": MODEL, "messages": "hi"}, {"model": MODEL, "messages": [{"role": "user", "content": [None]}]},
               body([{"type": "image_url", "image_url": "x"}]), body(media_io_kwargs={"video": 3})]
        for payload in (body(bad_frames), body(stream=True), body(temperature=5), *odd):
            status, _, ans = chat(s, payload)
            assert status == 400 and ans["error"]["type"] == "BadRequestError", payload
        assert call(s.url + "/chat/completions", b"not json")[0] == 400
        (tmp_path / "clip").mkdir()
        render_video(tmp_path / "clip/c.mp4", [{**SHOT, "start_frame": 0, "end_frame": 8}], 8.0, H, W)
        local = body([{"type": "video_url", "video_url": {"url": f"file://{tmp_path}/clip/c.mp4"}}])
        assert chat(s, local)[0] == 400  # like vLLM without --allowed-local-media-path
        s.allowed_local_media_path = str(tmp_path / "clip")
        assert content(chat(s, local)[2]).startswith(caption_of(SHOT))
        # text only is valid (as in vLLM): the "text model" answers
        status, _, ans = chat(s, body(parts=[]))
        assert status == 200 and content(ans) == "Describe this video."
        assert s.stats["error_400"] == 9 and s.stats["error_404"] == 1 and s.stats["bug"] == 0


def test_api_key():
    with VLMServer(api_key="s3cret") as s:
        assert chat(s)[0] == 401 and chat(s, headers={"Authorization": "Bearer nope"})[0] == 401
        assert call(s.url + "/models")[0] == 401 and call(s.root + "/health")[0] == 200
        assert chat(s, headers={"Authorization": "Bearer s3cret"})[0] == 200
        assert s.stats["error_401"] == 2 and s.log[-1]["auth"]


def test_warmup_like_sglang():
    with VLMServer(warmup=0.4) as s:
        assert call(s.root + "/health")[0] == 503 and call(s.url + "/models")[0] == 200
        assert chat(s)[0] == 503
        time.sleep(0.5)
        assert call(s.root + "/health")[0] == 200 and chat(s)[0] == 200


def outcomes(seed: int, tries: int = 12) -> list[int]:
    with VLMServer(seed=seed, fail_rate=0.5) as s:
        return [chat(s)[0] for _ in range(tries)]


def test_transient_500s_are_reproducible():
    first = outcomes(3)
    assert first == outcomes(3) and {200, 500} <= set(first)
    with VLMServer(retry_after=1.0, retry_after_seconds=0.25) as s:
        status, headers, ans = chat(s)
        assert status == 429 and headers["Retry-After"] == "0.25" and headers["retry-after-ms"] == "250"
        assert s.stats["error_429"] == 1


def test_deterministic_errors():
    with VLMServer(max_visual_frames=4, deterministic_500_substring="BOOM") as s:
        for _ in range(2):  # a retry of the same request fails the same way
            status, _, ans = chat(s)
            assert status == 400 and "exceeds the pre-allocated encoder cache size" in ans["error"]["message"]
        assert chat(s, body(media(n=4)))[0] == 200  # fewer frames fit
        assert [chat(s, body(media(n=4), text="x BOOM"))[0] for _ in range(3)] == [500] * 3
        meta = {"video": {"fps": 8.0, "frames_indices": [0, 1, 2], "total_num_frames": 8, "duration": 1.0}}
        status, _, ans = chat(s, body(media(n=4), media_io_kwargs=meta))
        assert status == 500 and "timestamps length (3)" in ans["error"]["message"]
        assert s.stats["error_400_encoder_cache"] == 2 and s.stats["error_500_substring"] == 3


def test_hang_is_abandoned_and_does_not_block_shutdown():
    s = VLMServer(hang_rate=1.0).start()
    t = time.monotonic()
    with pytest.raises(TimeoutError):
        chat(s, timeout=0.3)
    assert time.monotonic() - t < 2
    errors = []
    waiter = threading.Thread(target=lambda: errors.append(pytest.raises(Exception, chat, s, timeout=30)))
    waiter.start()
    time.sleep(0.2)
    t = time.monotonic()
    s.stop()
    waiter.join(5)
    assert not waiter.is_alive() and time.monotonic() - t < 2  # the hung request ended with the server
    assert len(errors) == 1
    assert s.stats["hang"] == 2


def test_delay_and_max_concurrency_give_capacity():
    with VLMServer(delay=0.1, max_concurrency=2) as s:
        payloads = [body(media(n=2 + 2 * (i % 3)), text=f"clip {i}") for i in range(8)]
        t = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            statuses = [r[0] for r in pool.map(lambda p: chat(s, p), payloads)]
        elapsed = time.monotonic() - t
    assert statuses == [200] * 8 and s.max_running == 2
    assert 0.38 < elapsed < 0.8  # 8 requests / (2 slots / 0.1 s)


def test_bad_answers():
    with VLMServer() as s:
        s.malformed_rate = 1.0
        status, _, raw = chat(s)
        assert status == 200 and isinstance(raw, bytes)
        with pytest.raises(json.JSONDecodeError):
            json.loads(raw)
        s.malformed_rate, s.drop_rate = 0.0, 1.0
        with pytest.raises((http.client.IncompleteRead, http.client.RemoteDisconnected, ConnectionError)):
            chat(s)
        s.drop_rate, s.length_rate = 0.0, 1.0
        ans = chat(s)[2]
        assert ans["choices"][0]["finish_reason"] == "length" and len(content(ans).split()) < 20
        s.length_rate, s.empty_rate = 0.0, 1.0
        assert content(chat(s)[2]) == ""
        s.empty_rate, s.boilerplate_rate = 0.0, 1.0
        assert content(chat(s)[2]).startswith("The video shows " + caption_of(SHOT))
        assert [s.stats[k] for k in ("malformed", "drop", "length", "empty", "boilerplate")] == [1] * 5


def test_repetition_loop_needs_sampling_to_escape():
    with VLMServer(repeat_rate=1.0) as s:
        for _ in range(2):  # greedy: the retry loops again
            ans = chat(s, body(temperature=0.0, max_tokens=40))[2]
            text = content(ans)
            assert len(text.split()) == 40 and ans["choices"][0]["finish_reason"] == "length"
            assert text.count(caption_of(SHOT)) >= 4
        ans = chat(s, body(temperature=0.7, seed=1))[2]
        assert ans["choices"][0]["finish_reason"] == "stop" and content(ans).count(caption_of(SHOT)) == 1
        s.repeat_rate = 0.5  # low temperature with sampling: a new seed may escape
        finishes = {chat(s, body(temperature=0.1, seed=k))[2]["choices"][0]["finish_reason"] for k in range(8)}
        assert finishes == {"stop", "length"}


def test_exit_after_and_dead():
    with VLMServer(exit_after=2) as s:
        assert [chat(s)[0] for _ in range(2)] == [200, 200]
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError, urllib.error.URLError)):
            chat(s)
        assert s.died.wait(2)
        time.sleep(0.1)
        with pytest.raises(urllib.error.URLError):
            call(s.root + "/health", timeout=2)
    for url in (dead_url(), VLMServer(dead=True).url):
        with pytest.raises(urllib.error.URLError, match="refused"):
            call(url + "/models", timeout=2)


# -- subprocess mode, as a "server in the job" command template starts it

def start(*args: str, env: dict | None = None, deadline: float = 10.0) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--port", "0", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    if select.select([proc.stdout], [], [], deadline)[0]:
        line = proc.stdout.readline()
        if line.startswith("listening on "):
            return proc, line.split()[-1]
    proc.kill()
    raise AssertionError(f"server did not start: {proc.communicate(timeout=5)}")


def test_subprocess_health_and_sigterm(tmp_path):
    proc, url = start("--model", "m1", "--stats-file", str(tmp_path / "stats.json"))
    try:
        assert call(url.removesuffix("/v1") + "/health")[0] == 200
        assert json.loads(call(url + "/models")[2])["data"][0]["id"] == "m1"
        status, _, raw = call(url + "/chat/completions", {**body(), "model": "m1"})
        assert status == 200 and caption_of(SHOT) in raw.decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
    assert json.loads((tmp_path / "stats.json").read_text())["stats"]["ok"] == 1


def test_subprocess_dies_with_status_0_after_n_requests():
    proc, url = start("--exit-after", "1", "--model", MODEL)
    try:
        assert call(url + "/chat/completions", body())[0] == 200
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError, urllib.error.URLError)):
            call(url + "/chat/completions", body(), timeout=5)
        assert proc.wait(5) == 0
    finally:
        proc.kill()


def test_subprocess_key_dead_and_start_delay():
    env = {"FAKE_VLM_KEY": "k-7f3a9"}
    proc, url = start("--require-key", "FAKE_VLM_KEY", env=env)
    try:
        assert call(url + "/models")[0] == 401
        assert call(url + "/models", headers={"Authorization": "Bearer k-7f3a9"})[0] == 200
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=5)
    assert proc.returncode == 0 and "k-7f3a9" not in out + err
    missing = subprocess.run([sys.executable, str(SCRIPT), "--require-key", "NO_SUCH_VAR_X"], capture_output=True,
                             text=True, timeout=20)
    assert missing.returncode == 2 and "NO_SUCH_VAR_X is not set" in missing.stderr
    dead = subprocess.run([sys.executable, str(SCRIPT), "--dead"], capture_output=True, text=True, timeout=20)
    assert dead.returncode == 0 and "listening" not in dead.stdout
    t = time.monotonic()
    proc, url = start("--start-delay", "0.5")
    try:
        assert time.monotonic() - t >= 0.5 and call(url + "/models")[0] == 200
    finally:
        proc.terminate()
        proc.wait(5)
