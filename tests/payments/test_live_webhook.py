"""localstripe's own webhook deliveries (signed with our secret) reach a real server and record
the payment that the customer's request never heard about."""

from __future__ import annotations

import threading
import time

import requests
from flask import Flask
from sqlalchemy import func, select
from werkzeug.serving import make_server

from portal.extensions import db
from portal.payments.models import Payment, StripeEvent
from tests.payments.conftest import WEBHOOK_SECRET, gateway_for
from tests.payments.fault_proxy import FaultProxy
from tests.payments.test_webhooks import _charged_behind_our_back


def test_localstripe_delivers_a_signed_event_that_records_the_payment(
    pay_app: Flask, proxy: FaultProxy, localstripe: str
) -> None:
    server = make_server("127.0.0.1", 0, pay_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    hook = f"{localstripe}/_config/webhooks/portal_test"
    requests.post(
        hook,
        data={
            "url": f"http://127.0.0.1:{server.server_port}/webhooks/stripe",
            "secret": WEBHOOK_SECRET,
            "events[]": ["payment_intent.succeeded"],
        },
        auth=("sk_test_portal", ""),
        timeout=10,
    ).raise_for_status()
    try:
        with pay_app.app_context():
            account, _invoice, _attempt, intent_id = _charged_behind_our_back(
                db.session, gateway_for(proxy.url), localstripe
            )
            db.session.commit()
            account_id = account.id
        recorded = 0
        for _ in range(150):  # deliveries arrive about a second after the charge
            with pay_app.app_context():
                recorded = db.session.scalar(
                    select(func.count())
                    .select_from(Payment)
                    .where(Payment.account_id == account_id)
                )
                db.session.remove()
            if recorded:
                break
            time.sleep(0.1)
        assert recorded == 1
        with pay_app.app_context():
            event = db.session.scalar(select(StripeEvent).where(StripeEvent.object_id == intent_id))
            assert event is not None and event.status == "processed"
    finally:
        # NOTE: localstripe keeps the registration for the session; point it nowhere.
        requests.post(
            hook,
            data={
                "url": "http://127.0.0.1:9/none",
                "secret": WEBHOOK_SECRET,
                "events[]": ["none.none"],
            },
            auth=("sk_test_portal", ""),
            timeout=10,
        )
        server.shutdown()
