"""A small fault-injecting HTTP proxy between the portal and localstripe.

localstripe ignores idempotency keys; this proxy gives them Stripe's meaning (a request whose
Idempotency-Key was seen before gets the first answer again, without reaching localstripe), and it
can break the conversation on purpose:

- "drop": forward the request, then close the connection without an answer (a lost response);
- "delay": forward the request, then hold the answer past the client's timeout;
- "500" / "429": answer with that error without forwarding (nothing happened upstream).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Match = Callable[[str, str], bool]


@dataclass
class Fault:
    kind: str  # "drop" | "delay" | "500" | "429"
    match: Match
    times: int = 1
    delay: float = 0.0


@dataclass
class Forwarded:
    method: str
    path: str
    key: str | None
    status: int
    body: bytes = b""
    sent: bytes = b""  # the request's body


@dataclass
class _Cached:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class ProxyState:
    upstream: str
    replay_by_key: bool = True
    faults: list[Fault] = field(default_factory=list)
    forwarded: list[Forwarded] = field(default_factory=list)
    replayed: int = 0
    cache: dict[str, _Cached] = field(default_factory=dict)
    key_locks: dict[str, threading.Lock] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.times > 0 and fault.match(method, path):
                    fault.times -= 1
                    return fault
        return None

    def key_lock(self, key: str) -> threading.Lock:
        with self.lock:
            return self.key_locks.setdefault(key, threading.Lock())


class FaultProxy:
    """Start with `FaultProxy(upstream).start()`; `.url` is what the portal talks to."""

    def __init__(self, upstream: str) -> None:
        self.state = ProxyState(upstream=upstream.rstrip("/"))
        state = self.state

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                key = self.headers.get("Idempotency-Key")
                if key and state.replay_by_key and self.command == "POST":
                    cache_key = f"{self.path}|{key}"
                    with state.key_lock(cache_key):
                        cached = state.cache.get(cache_key)
                        if cached is not None:
                            with state.lock:
                                state.replayed += 1
                            fault = state.take_fault(self.command, self.path)
                            if fault is not None and fault.kind == "drop":
                                self._drop()  # the replayed answer can be lost too
                                return
                            self._answer(cached)
                            return
                        self._forward(body, key, cache_key)
                    return
                self._forward(body, key, None)

            def _forward(self, body: bytes, key: str | None, cache_key: str | None) -> None:
                fault = state.take_fault(self.command, self.path)
                if fault is not None and fault.kind in ("500", "429"):
                    payload = b'{"error": {"type": "api_error", "message": "injected"}}'
                    self._answer(
                        _Cached(int(fault.kind), [("Content-Type", "application/json")], payload)
                    )
                    return
                request = urllib.request.Request(
                    state.upstream + self.path,
                    data=body if self.command != "GET" else None,
                    method=self.command,
                )
                for name, value in self.headers.items():
                    if name.lower() not in ("host", "content-length", "connection"):
                        request.add_header(name, value)
                try:
                    with urllib.request.urlopen(request, timeout=30) as response:
                        answer = _Cached(
                            response.status, list(response.getheaders()), response.read()
                        )
                except urllib.error.HTTPError as error:
                    answer = _Cached(error.code, list(error.headers.items()), error.read())
                with state.lock:
                    state.forwarded.append(
                        Forwarded(self.command, self.path, key, answer.status, answer.body, body)
                    )
                if cache_key is not None and answer.status < 500:
                    state.cache[cache_key] = answer
                if fault is not None and fault.kind == "drop":
                    self._drop()
                    return
                if fault is not None and fault.kind == "delay":
                    time.sleep(fault.delay)
                self._answer(answer)

            def _drop(self) -> None:
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True

            def _answer(self, answer: _Cached) -> None:
                try:
                    self.send_response(answer.status)
                    for name, value in answer.headers:
                        if name.lower() not in (
                            "content-length",
                            "connection",
                            "transfer-encoding",
                            "server",
                            "date",
                        ):
                            self.send_header(name, value)
                    self.send_header("Content-Length", str(len(answer.body)))
                    self.end_headers()
                    self.wfile.write(answer.body)
                except OSError:
                    pass  # the client gave up (timeout): the answer is lost, as intended

            do_GET = _handle
            do_POST = _handle
            do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> FaultProxy:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def inject(self, kind: str, match: Match, times: int = 1, delay: float = 0.0) -> None:
        with self.state.lock:
            self.state.faults.append(Fault(kind, match, times, delay))

    def clear_faults(self) -> None:
        with self.state.lock:
            self.state.faults.clear()

    def count(self, method: str, path_contains: str) -> int:
        with self.state.lock:
            return sum(
                1
                for f in self.state.forwarded
                if f.method == method and path_contains in f.path and f.status < 400
            )


def on(method: str, path_contains: str) -> Match:
    return lambda m, p: m == method and path_contains in p and "/_config" not in p
