"""A real HTTP server on 127.0.0.1 for fetch tests: Range requests, a connection dropped mid-file,
JSON API responses. Not a mock: `requests` talks to it over TCP like to any server."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class Server:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.api: dict[str, object] = {}  # path -> JSON body (or a callable(query) -> body)
        self.drop_once: dict[str, int] = {}  # path -> bytes sent before the first response is cut
        self.requests: list[tuple[str, str, str | None]] = []  # (path, query, Range header)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                parts = urlsplit(self.path)
                server.requests.append((parts.path, parts.query, self.headers.get("Range")))
                if parts.path in server.api:
                    body = server.api[parts.path]
                    body = body(parse_qs(parts.query)) if callable(body) else body
                    data = json.dumps(body).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                if parts.path not in server.files:
                    self.send_error(404)
                    return
                data, start = server.files[parts.path], 0
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                cut = server.drop_once.pop(parts.path, None)
                if cut is not None:
                    self.wfile.write(data[start:start + cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)  # the connection drops mid-file
                    return
                self.wfile.write(data[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "Server":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
