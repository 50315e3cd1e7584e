"""A stand-in for the one Stripe API call a chargeback webhook makes: GET /v1/disputes/<id>.

localstripe has no disputes. The portal's webhook handler does not trust the event's body: it
fetches Stripe's copy of the dispute through stripe-python, so the test serves that copy over
real HTTP (Stripe's JSON shape), and stripe-python parses it as it would Stripe's answer.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class StripeStandIn:
    def __init__(self) -> None:
        self.disputes: dict[str, dict[str, Any]] = {}
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # the http.server spelling
                outer.requests.append(self.path)
                prefix = "/v1/disputes/"
                found = (
                    outer.disputes.get(self.path[len(prefix) :].split("?")[0])
                    if self.path.startswith(prefix)
                    else None
                )
                if found is None:
                    status, body = (
                        404,
                        {
                            "error": {
                                "type": "invalid_request_error",
                                "code": "resource_missing",
                                "message": f"No such object: {self.path}",
                            }
                        },
                    )
                else:
                    status, body = 200, found
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Request-Id", "req_stand_in")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add_dispute(
        self,
        dispute_id: str,
        *,
        payment_intent: str,
        amount: int,
        currency: str,
        due_by: int,
        fee: int,
        reason: str = "fraudulent",
        status: str = "needs_response",
    ) -> None:
        """Stripe's copy of a new chargeback: the funds already withdrawn, with the fee."""
        self.disputes[dispute_id] = {
            "id": dispute_id,
            "object": "dispute",
            "amount": amount,
            "currency": currency.lower(),
            "charge": f"ch_{dispute_id}",
            "payment_intent": payment_intent,
            "reason": reason,
            "status": status,
            "evidence_details": {"due_by": due_by, "has_evidence": False},
            "balance_transactions": [
                {
                    "id": f"txn_{dispute_id}_withdrawal",
                    "object": "balance_transaction",
                    "amount": -amount,
                    "fee": fee,
                    "currency": currency.lower(),
                }
            ],
        }
