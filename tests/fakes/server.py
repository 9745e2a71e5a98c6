"""A small threaded HTTP server on 127.0.0.1 with scripted faults, the base of every fake.

A fake subclasses `FakeProvider` and implements `handle(request) -> Reply`. Tests queue faults
(`server.faults.add(...)`) that replace the next matching replies: an HTTP status with body and
headers, a delay, or raw bytes (malformed JSON). Every request is recorded with its arrival
time so tests can assert rate limits and retry schedules from the server's side.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    at: float


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # JSON-serialisable, or bytes sent as they are
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    trickle: float = 0.0  # hostile: the body one byte every `trickle` seconds
    truncate: int | None = None  # hostile: only this many body bytes, Content-Length says all


@dataclass
class Fault:
    reply: Reply
    path: str | None = None  # only requests whose path starts with this
    times: int = 1


class FaultPlan:
    def __init__(self):
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()

    def add(
        self,
        status=500,
        body=None,
        *,
        headers=None,
        delay=0.0,
        path=None,
        times=1,
        trickle=0.0,
        truncate=None,
    ):
        reply = Reply(status, body, headers or {}, delay, trickle, truncate)
        with self._lock:
            self._faults.append(Fault(reply, path, times))

    def clear(self):
        with self._lock:
            self._faults.clear()

    def take(self, path: str) -> Reply | None:
        with self._lock:
            for fault in self._faults:
                if fault.path is None or path.startswith(fault.path):
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                    return fault.reply
        return None


class _Server(ThreadingHTTPServer):
    # socketserver's listen backlog is 5: a burst of new connections beyond it has its SYNs
    # dropped and retried by the kernel a second later, which looks like a 1 s provider stall.
    request_queue_size = 128


class FakeProvider:
    """Start with `with FakeX() as server:`; `server.url` is its base URL."""

    latency: tuple[float, float] = (0.0, 0.0)  # uniform simulated latency per reply

    def __init__(self):
        self.faults = FaultPlan()
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    def handle(self, request: Request) -> Reply:  # pragma: no cover - subclasses
        raise NotImplementedError

    def _serve(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(handler.path)
        length = int(handler.headers.get("content-length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            body = raw
        request = Request(
            method,
            parts.path,
            {k: v[-1] for k, v in parse_qs(parts.query).items()},
            {k.lower(): v for k, v in handler.headers.items()},
            body,
            time.monotonic(),
        )
        with self._lock:
            self.requests.append(request)
        reply = self.faults.take(parts.path) or self.handle(request)
        low, high = self.latency
        delay = reply.delay + (low + (high - low) * (hash((request.at, parts.path)) % 1000) / 1000)
        if delay:
            time.sleep(delay)
        data = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
        handler.send_response(reply.status)
        handler.send_header("content-type", "application/json; charset=utf-8")
        handler.send_header("content-length", str(len(data)))
        for key, value in reply.headers.items():
            handler.send_header(key, value)
        handler.end_headers()
        if reply.truncate is not None:  # the connection drops mid-body
            handler.wfile.write(data[: reply.truncate])
            handler.wfile.flush()
            handler.close_connection = True
            return
        if reply.trickle:
            try:
                for i in range(len(data)):
                    handler.wfile.write(data[i : i + 1])
                    handler.wfile.flush()
                    time.sleep(reply.trickle)
            except OSError:  # the client gave up, as it should
                handler.close_connection = True
            return
        handler.wfile.write(data)

    def __enter__(self) -> FakeProvider:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real APIs and pooled clients use
            # Headers and body go out in two writes; with Nagle on, the body waits for the
            # client's delayed ACK and every reply takes 40 ms longer than it should.
            disable_nagle_algorithm = True

            def do_GET(self):
                fake._serve(self, "GET")

            def do_POST(self):
                fake._serve(self, "POST")

            def log_message(self, *args):
                pass

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    @property
    def url(self) -> str:
        assert self._httpd is not None
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def count(self, path_prefix: str = "") -> int:
        with self._lock:
            return sum(1 for r in self.requests if r.path.startswith(path_prefix))
