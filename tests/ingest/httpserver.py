"""A real HTTP server on 127.0.0.1 for fetch tests. Not a mock: clients talk to it over TCP like to
any server. It speaks Range / If-Range / ETag, and has knobs for the failures fetch must survive.

    files       path -> bytes served (ETag = hash of the bytes, so changing them changes the ETag)
    api         path -> JSON body, or callable(query) -> body | (status, body[, headers])
    drop_once   path -> bytes sent before the next response for it is cut mid-file
    no_range    paths whose server ignores Range (always 200 with the whole file)
    gzip        paths sent gzip-compressed whatever the client accepts (and without Range)
    fail_next   path -> [(status, headers), ...] answered before serving normally
    requests    (path, query, Range header) per request; `log` has every header and the status
"""

from __future__ import annotations

import gzip
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self
from urllib.parse import parse_qs, urlsplit


class Server:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.api: dict[str, object] = {}
        self.drop_once: dict[str, int] = {}
        self.no_range: set[str] = set()
        self.gzip: set[str] = set()
        self.fail_next: dict[str, list[tuple[int, dict]]] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self.log: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like real servers; every reply has a length

            def log_message(self, *args):  # keep test output clean
                pass

            def reply(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
                self.send_response(status)
                for k, v in {"Content-Length": str(len(body)), **(headers or {})}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                parts = urlsplit(self.path)
                server.requests.append((parts.path, parts.query, self.headers.get("Range")))
                entry = {"path": parts.path, "query": parts.query, "headers": dict(self.headers)}
                server.log.append(entry)
                queued = server.fail_next.get(parts.path)
                if queued:
                    status, headers = queued.pop(0)
                    entry["status"] = status
                    return self.reply(status, b"try again later", headers)
                if parts.path in server.api:
                    return self.answer_api(server.api[parts.path], parse_qs(parts.query), entry)
                if parts.path not in server.files:
                    entry["status"] = 404
                    return self.reply(404, b"not found")
                self.send_file(server.files[parts.path], parts.path, entry)

            def answer_api(self, body, query: dict, entry: dict) -> None:
                status, headers = 200, {}
                body = body(query) if callable(body) else body
                if isinstance(body, tuple):
                    status, body, headers = (*body, {})[:3]
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                entry["status"] = status
                self.reply(status, data, {"Content-Type": "application/json", **headers})

            def send_file(self, data: bytes, path: str, entry: dict) -> None:
                etag = '"' + hashlib.sha1(data).hexdigest() + '"'
                rng, if_range = self.headers.get("Range"), self.headers.get("If-Range")
                start, zipped = 0, path in server.gzip
                if zipped:
                    data = gzip.compress(data, mtime=0)
                if rng and path not in server.no_range and not zipped and if_range in (None, etag):
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        entry["status"] = 416
                        return self.reply(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                    entry["status"] = 206
                else:
                    self.send_response(200)
                    entry["status"] = 200
                self.send_header("Accept-Ranges", "none" if path in server.no_range else "bytes")
                self.send_header("ETag", etag)
                if zipped:
                    self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                cut = server.drop_once.pop(path, None)
                if cut is not None:
                    self.wfile.write(data[start:start + cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)  # the connection drops mid-file
                    return
                self.wfile.write(data[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def hits(self, path: str) -> list[dict]:
        return [e for e in self.log if e["path"] == path]

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
