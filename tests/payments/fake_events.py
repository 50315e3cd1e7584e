"""A small stand-in for Stripe's event list (`GET /v1/events` with `limit`, `ending_before` and
`starting_after`, newest first, as Stripe pages it) and its PaymentIntents, counting every call.
localstripe lists events but refuses `ending_before`, which walking forward from a cursor needs."""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


class FakeStripe:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []  # oldest first
        self.intents: dict[str, dict[str, Any]] = {}
        self.calls: Counter[str] = Counter()
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                with outer.lock:
                    outer.calls[parts.path] += 1
                    status, body = outer.answer(parts.path, query)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> FakeStripe:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- what it holds ---------------------------------------------------------------------

    def add_event(self, event_type: str, obj: dict[str, Any]) -> dict[str, Any]:
        event = {
            "id": f"evt_{len(self.events):05d}",
            "object": "event",
            "type": event_type,
            "created": 1_800_000_000 + len(self.events),
            "data": {"object": obj},
        }
        self.events.append(event)
        return event

    def answer(self, path: str, query: dict[str, str]) -> tuple[int, Any]:
        if path == "/v1/events":
            return 200, self._page(query)
        if path.startswith("/v1/payment_intents/"):
            intent = self.intents.get(path.rsplit("/", 1)[1])
            if intent is None:
                return 404, {"error": {"type": "invalid_request_error", "message": "No such"}}
            return 200, intent
        return 404, {"error": {"type": "invalid_request_error", "message": "Unknown path"}}

    def _page(self, query: dict[str, str]) -> dict[str, Any]:
        limit = int(query.get("limit", "10"))
        ids = [event["id"] for event in self.events]
        if "ending_before" in query:
            # The `limit` events right after the cursor (in time), newest first.
            start = ids.index(query["ending_before"]) + 1
            chosen = self.events[start : start + limit]
            more = start + limit < len(self.events)
        else:
            newest_first = list(reversed(self.events))
            start = 0
            if "starting_after" in query:
                start = [e["id"] for e in newest_first].index(query["starting_after"]) + 1
            chosen = list(reversed(newest_first[start : start + limit]))
            more = start + limit < len(newest_first)
        return {
            "object": "list",
            "url": "/v1/events",
            "has_more": more,
            "data": list(reversed(chosen)),
        }
