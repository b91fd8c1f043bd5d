"""A fake vision-language model behind a real OpenAI chat-completions server on 127.0.0.1.

Not a mock: clients reach it over TCP/HTTP/1.1 (keep-alive) like vLLM or SGLang. It validates request
bodies, decodes the frames it is sent (JPEG frames as `data:video/jpeg`, `image_url` parts, or a whole
`data:video/mp4` / `file://` clip) and answers with a caption computed from the pixels: on the shapes
world (longvid.shapes) exactly `caption_of(shot)`, e.g. "a red circle moves left on a black
background", else "a video of N frames, mostly <colour> (r,g,b)". One word counts as one token.
A text-only request (the rewrite pass) is answered by a "text model" that shortens the caption it
is given (vlm_media.shorten).

Routes: GET /v1/models, /health (503 during warmup, as SGLang), /metrics (vLLM gauge names), /stats
(the counters as JSON), POST /v1/chat/completions. In-process: `with VLMServer(delay=0.1) as s:
s.url` ("http://127.0.0.1:PORT/v1"), `s.stats` (Counter by outcome), `s.log` (one dict per chat
request). Subprocess: `python tests/caption/vlm_server.py --port P [--model M] [--fail-rate 0.3 ...]`
prints "listening on URL" and exits 0 on SIGTERM (writing --stats-file if given).

Faults (OPTIONS below; CLI flags are the same names with dashes). Transient faults are drawn from
sha256(seed, fault, request content, attempt number of that content), so a clip's n-th try meets the
same fault whatever the arrival order. Errors (401/404/400/429/500/503) answer at once and hold no
slot; hangs hold no slot either (in vLLM they wait unscheduled). Hangs, queued and delayed requests
end when the client disconnects (vLLM aborts those) or the server stops, so shutdown never blocks.

`stats` keys: requests, chat, "GET <path>", and one outcome per chat request: ok, length, repeat,
boilerplate, empty, hang, drop, malformed, gone (the client left while queued), died (exit_after),
bug (an exception in this server: a 500, traceback on stderr), error_<status> (401, 404, 400, 429,
500 injected, 503 warmup), error_400_encoder_cache, error_500_substring, error_500_timestamps.
The shapes caption needs frames of about 48x64 px or more (the object >= 12 px across).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self

from vlm_media import Reject, bad, describe, parse, shorten

MODEL = "fake-vlm"
BOILERPLATE = "The video shows "
LOOP_TOKENS = 1024  # a repetition loop without max_tokens runs this long (vLLM: to the context end)
OPTIONS = {  # name: (default, type, help)
    "seed": (0, int, "seed of every fault draw"),
    "warmup": (0.0, float, "seconds after start with /health and chat 503 (/v1/models 200, as SGLang)"),
    "delay": (0.0, float, "seconds each chat request takes in its slot"),
    "max_concurrency": (None, int, "requests processed at once (beyond: queued); capacity = this/delay"),
    "fail_rate": (0.0, float, "fraction answered 500 (transient: the next attempt draws again)"),
    "retry_after": (0.0, float, "fraction answered 429 with Retry-After"),
    "retry_after_seconds": (1.0, float, "the Retry-After value (plus retry-after-ms)"),
    "max_visual_frames": (None, int, "more frames than this: deterministic 400 (encoder cache size)"),
    "deterministic_500_substring": (None, str, "prompts containing this always get 500"),
    "hang_rate": (0.0, float, "fraction read and never answered (until the client gives up)"),
    "hang_first": (0, int, "chat requests 1..N hang unless refused as invalid: a hang a test can count on "
                           "whatever the routing (rates are drawn per server, so which server meets a clip "
                           "changes its draws)"),
    "malformed_rate": (0.0, float, "fraction answered 200 with a body that is not JSON"),
    "drop_rate": (0.0, float, "fraction whose connection closes mid-response"),
    "length_rate": (0.0, float, "fraction cut at half their words with finish_reason length"),
    "boilerplate_rate": (0.0, float, f"fraction starting {BOILERPLATE!r}"),
    "repeat_rate": (0.0, float, "fraction looping until max_tokens; only at temperature < 0.5, drawn on "
                                "(content, seed; greedy t=0: content only), so a greedy retry loops again "
                                "and a new seed (t > 0) or temperature >= 0.5 escapes"),
    "empty_rate": (0.0, float, "fraction answered with empty content"),
    "exit_after": (None, int, "after N chat requests the server dies: later ones are dropped, the "
                              "port closes; a subprocess exits with status 0 (as vLLM can)"),
    "allowed_local_media_path": (None, str, "serve file:// media under this folder (vLLM's flag)"),
}


def dead_url() -> str:
    """The URL of a port nobody listens on (connection refused): the dead one of several endpoints."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


class VLMServer:
    def __init__(self, model: str = MODEL, port: int = 0, api_key: str | None = None, dead: bool = False,
                 **options):
        if unknown := set(options) - set(OPTIONS):
            raise TypeError(f"unknown options {sorted(unknown)}")
        for name, (default, _, _) in OPTIONS.items():
            setattr(self, name, options.get(name, default))  # plain attributes: a test may change them live
        self.model, self.api_key, self.dead = model, api_key, dead
        self.stats: Counter = Counter()
        self.log: list[dict] = []
        self.exit_process, self.stats_file = False, None  # subprocess mode: exit_after ends the process
        self.lock, self.stopping, self.died = threading.Lock(), threading.Event(), threading.Event()
        self.attempts: Counter = Counter()
        self.running = self.waiting = self.max_running = 0
        self.first_arrival = self.last_answer = None  # time.monotonic() of the answered chat requests
        self.slots = threading.Semaphore(self.max_concurrency) if self.max_concurrency else None
        self.conns: set[socket.socket] = set()
        self.serving = False
        self.started = time.monotonic()
        if dead:  # nothing listens: connection refused
            self.url, self.httpd = dead_url(), None
        else:
            self.httpd = Listener(("127.0.0.1", port), Handler)
            self.httpd.vlm = self
            self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.root = self.url.removesuffix("/v1")
        self.port = int(self.root.rsplit(":", 1)[1])

    # -- lifecycle
    def start(self) -> Self:
        self.started = time.monotonic()
        if self.httpd:
            self.serving = True
            threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection (waiting handler threads see `stopping`)."""
        self.stopping.set()
        with self.lock:  # idempotent: exit_after's stop and the test's may race
            httpd, self.httpd, conns = self.httpd, None, list(self.conns)
        if httpd:
            if self.serving:  # shutdown() waits for serve_forever, so only after start()
                httpd.shutdown()
            httpd.server_close()
            for c in conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    __enter__ = start

    def __exit__(self, *exc) -> None:
        self.stop()

    def die(self, stats_file: str | None = None) -> None:
        with self.lock:
            if self.died.is_set():
                return
            self.died.set()
            self.stats["died"] += 1
        if self.exit_process:
            self.write_stats(stats_file)
            os._exit(0)
        threading.Thread(target=self.stop, daemon=True).start()

    def write_stats(self, path: str | None) -> None:
        if path:
            Path(path).write_text(json.dumps(self.snapshot()))

    def snapshot(self) -> dict:
        with self.lock:
            return {"stats": dict(self.stats), "max_running": self.max_running,
                    "first_arrival": self.first_arrival, "last_answer": self.last_answer}

    # -- accounting and fault draws
    def count(self, *names: str) -> int:
        with self.lock:
            for n in names:
                self.stats[n] += 1
            return self.stats[names[-1]]

    def draw(self, fault: str, *key) -> float:
        h = hashlib.sha256(repr((self.seed, fault, *key)).encode()).digest()
        return int.from_bytes(h[:8], "big") / 2**64

    def gone(self, conn: socket.socket) -> bool:
        """The client closed its side (or the server is stopping)."""
        if self.stopping.is_set():
            return True
        try:
            if select.select([conn], [], [], 0)[0]:
                return conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True
        return False

    def sleep(self, conn: socket.socket, seconds: float | None) -> bool:
        """Wait `seconds` (None: forever) unless the client leaves first; True if it is still there."""
        end = None if seconds is None else time.monotonic() + seconds
        while not self.gone(conn):
            left = 0.02 if end is None else end - time.monotonic()
            if left <= 0:
                return True
            time.sleep(min(left, 0.02))
        return False

    def serve_slot(self, conn: socket.socket) -> bool:
        """Queue for one of max_concurrency slots, then hold it `delay` s; False if the client left."""
        with self.lock:
            self.waiting += 1
        try:
            while self.slots and not self.slots.acquire(timeout=0.02):
                if self.gone(conn):
                    return False
        finally:
            with self.lock:
                self.waiting -= 1
        with self.lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            return self.sleep(conn, self.delay)
        finally:
            with self.lock:
                self.running -= 1
            if self.slots:
                self.slots.release()

    def answer(self, req: dict, p: dict) -> tuple[str, str, str, int]:
        """(content, finish_reason, outcome, completion_tokens) for a valid request, faults applied."""
        short, dense = (shorten(p["text"]),) * 2 if p["mode"] == "text" else describe(p["frames"])
        temp = 1.0 if req.get("temperature") is None else req["temperature"]
        max_tokens = req.get("max_completion_tokens") or req.get("max_tokens")
        draw = lambda fault: self.draw(fault, p["key"], p["attempt"])  # noqa: E731
        outcome, finish = "ok", "stop"
        if draw("empty") < self.empty_rate:
            short = dense = ""
            outcome = "empty"
        elif temp < 0.5 and self.draw("repeat", p["key"], req.get("seed") if temp > 0 else None) < self.repeat_rate:
            dense = " ".join([short] * (((max_tokens or LOOP_TOKENS) // len(short.split())) + 1))
            outcome = "repeat"
        elif draw("boilerplate") < self.boilerplate_rate:
            dense = BOILERPLATE + dense
            outcome = "boilerplate"
        rf = req.get("response_format") or {}
        content = json.dumps({"dense": dense, "short": short}) if rf.get("type") == "json_object" else dense
        words = content.split(" ") if outcome != "empty" else []
        limit = max_tokens or (LOOP_TOKENS if outcome == "repeat" else None)
        if limit and len(words) > limit:
            words, finish = words[:limit], "length"
        elif words and draw("length") < self.length_rate:
            words, finish, outcome = words[:max(1, len(words) // 2)], "length", "length"
        if finish == "length" and outcome == "ok":
            outcome = "length"
        return " ".join(words), finish, outcome, len(words)


class Listener(ThreadingHTTPServer):
    request_queue_size = 128  # a burst of client connections must not overflow the backlog (1 s SYN retry)
    daemon_threads = True


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 5  # idle keep-alive connections close after 5 s, as uvicorn's (vLLM's) default
    # TCP_NODELAY as uvicorn: headers and body go out as two writes, and with Nagle the body would
    # wait for the client's delayed ACK (40 ms per answer, measured with bench/caption.py)
    disable_nagle_algorithm = True

    def log_message(self, *args):  # keep test output clean
        pass

    def setup(self):
        super().setup()
        self.vlm: VLMServer = self.server.vlm
        with self.vlm.lock:
            self.vlm.conns.add(self.connection)

    def finish(self):
        with self.vlm.lock:
            self.vlm.conns.discard(self.connection)
        super().finish()

    def reply(self, status: int, body, headers: dict | None = None, ctype="application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        for k, v in {"Content-Type": ctype, "Content-Length": str(len(data)), **(headers or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def drop(self, partial: bytes = b"") -> None:
        if partial:  # headers promise more than comes
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(2 * len(partial)))
            self.end_headers()
            self.wfile.write(partial)
            self.wfile.flush()
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def authorized(self) -> bool:
        key = self.vlm.api_key
        return not key or self.headers.get("Authorization", "") == f"Bearer {key}"

    def warming(self) -> bool:
        return time.monotonic() - self.vlm.started < self.vlm.warmup

    def do_GET(self):
        vlm, path = self.vlm, self.path.split("?")[0]
        vlm.count("requests", f"GET {path}")
        if vlm.died.is_set():
            return self.drop()
        if path == "/health":
            return self.reply(503 if self.warming() else 200, b"", ctype="text/plain")
        if path == "/metrics":
            text = "".join(f'vllm:num_requests_{k}{{model_name="{vlm.model}"}} {v}\n'
                           for k, v in (("running", vlm.running), ("waiting", vlm.waiting)))
            return self.reply(200, text.encode(), ctype="text/plain; version=0.0.4")
        if path == "/stats":
            return self.reply(200, vlm.snapshot())
        if path.startswith("/v1/") and not self.authorized():
            return self.reply(401, {"error": {"message": "Unauthorized", "type": "AuthenticationError", "code": 401}})
        if path == "/v1/models":
            return self.reply(200, {"object": "list", "data": [{"id": vlm.model, "object": "model",
                                                                "owned_by": "vllm", "created": 0}]})
        self.reply(404, {"error": {"message": f"no route {path}", "type": "NotFoundError", "code": 404}})

    def do_POST(self):
        vlm = self.vlm
        n = vlm.count("requests", "chat")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if vlm.died.is_set() or (vlm.exit_after is not None and n > vlm.exit_after):
            vlm.die(vlm.stats_file)
            return self.drop()
        entry = {"n": n, "outcome": None, "auth": "Authorization" in self.headers, "t0": time.monotonic()}
        try:
            try:
                content, finish, usage = self.chat(body, entry)
            except Reject:
                raise
            except Exception as e:  # a bug here: still an HTTP answer, counted, with the traceback on stderr
                traceback.print_exc()
                raise Reject(500, f"fake server bug: {type(e).__name__}", "InternalServerError", "bug") from None
        except Reject as r:
            entry["outcome"] = r.outcome
            vlm.count(r.outcome)
            with vlm.lock:
                vlm.log.append(entry)
            return self.reply(r.status, {"error": {"message": str(r), "type": r.kind, "param": None, "code": r.status}},
                              r.headers)
        with vlm.lock:
            vlm.log.append(entry)
        if entry["outcome"] != "hang":
            vlm.count(entry["outcome"])
        if entry["outcome"] in ("hang", "drop", "malformed", "gone"):
            return
        self.reply(200, {"id": f"chatcmpl-{n}", "object": "chat.completion", "created": int(time.time()),
                         "model": vlm.model, "usage": usage,
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                      "finish_reason": finish, "logprobs": None}]})
        entry["t1"] = time.monotonic()  # arrival and answer times: a bench can see the client's gaps
        with vlm.lock:
            vlm.first_arrival = min(vlm.first_arrival or entry["t0"], entry["t0"])
            vlm.last_answer = entry["t1"]

    def chat(self, body: bytes, entry: dict):
        vlm = self.vlm
        if self.path.split("?")[0] != "/v1/chat/completions":
            raise Reject(404, f"no route {self.path}", "NotFoundError")
        if not self.authorized():
            raise Reject(401, "Unauthorized", "AuthenticationError")
        if self.warming():
            raise Reject(503, "The server is warming up", "ServiceUnavailableError")
        try:
            req = json.loads(body)
            assert isinstance(req, dict)
        except (ValueError, AssertionError):
            raise bad("the body is not a JSON object") from None
        if req.get("model") != vlm.model:
            raise Reject(404, f"The model `{req.get('model')}` does not exist.", "NotFoundError")
        for key, ok in (("max_tokens", lambda v: isinstance(v, int) and v >= 1),
                        ("max_completion_tokens", lambda v: isinstance(v, int) and v >= 1),
                        ("temperature", lambda v: isinstance(v, (int, float)) and 0 <= v <= 2),
                        ("top_p", lambda v: isinstance(v, (int, float)) and 0 < v <= 1),
                        ("seed", lambda v: isinstance(v, int)), ("n", lambda v: v == 1),
                        ("stream", lambda v: v is False),
                        ("response_format", lambda v: isinstance(v, dict) and v.get("type") in
                         ("text", "json_object", "json_schema"))):
            if req.get(key) is not None and not ok(req[key]):
                raise bad(f"{key}: invalid value {req[key]!r} (streaming and n > 1 are not served)")
        p = parse(req, vlm)
        with vlm.lock:
            p["attempt"] = vlm.attempts[p["key"]]
            vlm.attempts[p["key"]] += 1
        frames, meta = p["frames"], p["meta"]
        entry.update(mode=p["mode"], frames=len(frames), size=list(frames[0].shape[:2]) if frames else None, key=p["key"],
                     attempt=p["attempt"], seed=req.get("seed"), temperature=req.get("temperature"),
                     max_tokens=req.get("max_tokens"), meta=meta, prompt=p["text"][:200])
        if vlm.max_visual_frames is not None and len(frames) > vlm.max_visual_frames:
            budget = p["visual"] * vlm.max_visual_frames // len(frames)
            raise Reject(400, f"video item with length {p['visual']} exceeds the pre-allocated encoder cache size "
                              f"{budget}. Please reduce the input size or increase the encoder cache size "
                              "by setting --limit-mm-per-prompt at startup.", "BadRequestError",
                         "error_400_encoder_cache")
        if "frames_indices" in meta and len(meta["frames_indices"]) != len(frames):  # the Qwen3-VL 500
            raise Reject(500, f"timestamps length ({len(meta['frames_indices'])}) should be equal video length "
                              f"({len(frames)})", "InternalServerError", "error_500_timestamps")
        sub = vlm.deterministic_500_substring
        if sub and sub in p["text"]:
            raise Reject(500, "EngineCore encountered an issue", "InternalServerError", "error_500_substring")
        draw = lambda fault: vlm.draw(fault, p["key"], p["attempt"])  # noqa: E731
        if entry["n"] > vlm.hang_first and draw("429") < vlm.retry_after:
            s = vlm.retry_after_seconds
            raise Reject(429, "Too many requests", "RateLimitError", headers={
                "Retry-After": f"{s:g}", "retry-after-ms": str(round(s * 1000))})
        if entry["n"] > vlm.hang_first and draw("500") < vlm.fail_rate:
            raise Reject(500, "Internal server error (injected)", "InternalServerError")
        if entry["n"] <= vlm.hang_first or draw("hang") < vlm.hang_rate:
            entry["outcome"] = "hang"
            vlm.count("hang")  # now, not at the end: a test may look while it hangs
            vlm.sleep(self.connection, None)
            self.drop()
            return None, None, None
        if not vlm.serve_slot(self.connection):
            entry["outcome"] = "gone"  # the client left (or the server stopped) while queued or served
            self.drop()
            return None, None, None
        content, finish, entry["outcome"], completion = vlm.answer(req, p)
        prompt = len(p["text"].split()) + p["visual"]
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        if draw("drop") < vlm.drop_rate:
            entry["outcome"] = "drop"
            self.drop(json.dumps({"id": "x", "choices": []}).encode()[:20])
        elif draw("malformed") < vlm.malformed_rate:
            entry["outcome"] = "malformed"
            self.reply(200, b'{"id": "chatcmpl-broken", "choices": [{"message": <html>502 Bad Gateway</html>')
        return content, finish, usage


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0, help="0: a free port (printed)")
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--require-key", metavar="ENVVAR", help="answer 401 unless 'Authorization: Bearer $ENVVAR'")
    ap.add_argument("--dead", action="store_true", help="exit 0 at once without listening (a server that dies)")
    ap.add_argument("--start-delay", type=float, default=0.0, help="seconds before the port opens (as vLLM)")
    ap.add_argument("--stats-file", help="write the counters as JSON here on exit")
    for name, (default, typ, help_) in OPTIONS.items():
        ap.add_argument("--" + name.replace("_", "-"), type=typ, default=default, help=help_)
    args = ap.parse_args(argv)
    key = None
    if args.require_key:
        key = os.environ.get(args.require_key)
        if not key:
            ap.error(f"--require-key: the environment variable {args.require_key} is not set")
    if args.dead:
        print("vlm_server: --dead, exiting without listening", file=sys.stderr, flush=True)
        return 0
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if stop.wait(args.start_delay):
        return 0
    server = VLMServer(args.model, args.port, api_key=key, **{k: getattr(args, k) for k in OPTIONS})
    server.exit_process, server.stats_file = True, args.stats_file
    server.start()
    print(f"listening on {server.url}", flush=True)
    while not stop.wait(0.2):
        pass
    server.stop()
    server.write_stats(args.stats_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
