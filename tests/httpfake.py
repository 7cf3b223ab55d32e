"""A misbehaving HTTP server for the download tests, bound to 127.0.0.1 only.

`FakeHttp(files)` serves `files` (path -> bytes) with Range support (206 and
Content-Range, If-Range against the ETag) from a thread. Per-path rules
change its behaviour:
    drops[path] = [n, ...]   close the connection after n body bytes, once per entry
    status[path] = [code, ...]  answer these codes first (500, 503...), one per request
    redirects[path] = location  answer 302 to `location`
    chunked = {path, ...}    send the body chunked (no Content-Length)
    no_range = {path, ...}   ignore Range headers (always 200, the whole file)
    stall[path] = n          after n body bytes stop sending but keep the connection open
    reset = True             drops end with a TCP RST (unread bytes are lost) instead of a FIN
`requests` records (path, Range header or "") for every request."""
from __future__ import annotations

import hashlib
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeHttp:
    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = dict(files)
        self.drops: dict[str, list[int]] = {}
        self.status: dict[str, list[int]] = {}
        self.redirects: dict[str, str] = {}
        self.chunked: set[str] = set()
        self.no_range: set[str] = set()
        self.stall: dict[str, int] = {}
        self.reset = False
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                fake.handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHttp:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @staticmethod
    def etag(data: bytes) -> str:
        return '"' + hashlib.sha256(data).hexdigest()[:16] + '"'

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path
        rng = h.headers.get("Range", "")
        with self.lock:
            self.requests.append((path, rng))
            code = self.status[path].pop(0) if self.status.get(path) else 0
            drop = self.drops[path].pop(0) if self.drops.get(path) else -1
        if code:
            body = f"fake error {code}\n".encode()
            h.send_response(code)
            h.send_header("Content-Length", str(len(body)))
            h.send_header("Connection", "close")
            h.end_headers()
            h.wfile.write(body)
            return
        if path in self.redirects:
            h.send_response(302)
            h.send_header("Location", self.redirects[path])
            h.send_header("Content-Length", "0")
            h.send_header("Connection", "close")
            h.end_headers()
            return
        if path not in self.files:
            h.send_error(404, "Not Found")
            return
        data = self.files[path]
        start = 0
        if rng.startswith("bytes=") and path not in self.no_range:
            if_range = h.headers.get("If-Range", "")
            if not if_range or if_range == self.etag(data):
                start = int(rng[6:].split("-")[0])
        if start >= len(data) and start:
            h.send_response(416)
            h.send_header("Content-Range", f"bytes */{len(data)}")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        body = data[start:]
        h.send_response(206 if start else 200)
        h.send_header("ETag", self.etag(data))
        h.send_header("Connection", "close")
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        if path in self.chunked:
            h.send_header("Transfer-Encoding", "chunked")
        else:
            h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        limit = drop if drop >= 0 else self.stall.get(path, -1)
        out = body if limit < 0 else body[:limit]
        if path in self.chunked:
            for i in range(0, len(out), 1000):
                piece = out[i:i + 1000]
                h.wfile.write(f"{len(piece):x};ext=1\r\n".encode() + piece + b"\r\n")
            if limit < 0:
                h.wfile.write(b"0\r\nX-Trailer: yes\r\n\r\n")
        else:
            h.wfile.write(out)
        h.wfile.flush()
        if drop >= 0:
            if self.reset:     # linger 0: close() sends RST
                h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            h.close_connection = True
        elif path in self.stall:
            self.release.wait(30)
            time.sleep(0)
