"""Payments test wiring: one localstripe per test session, a fault proxy in front of it, and
apps over fresh databases for tests that need real commits from several threads."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from sqlalchemy.orm import Session

from portal.accounts.models import Account, User
from portal.payments import services
from portal.payments.gateway import Gateway
from portal.payments.models import PaymentMethod
from tests.conftest import ROOT, app_with_own_database, missing_service
from tests.factories import make_account, make_invoice, make_user
from tests.payments.fault_proxy import FaultProxy

WEBHOOK_SECRET = "whsec_test_portal"
SUCCESS = "4242424242424242"
DECLINE = "4000000000000341"
THREE_DS = "4000002760003184"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def localstripe() -> Iterator[str]:
    """The demo's Stripe simulator (localstripe, in memory, with the pay page's one-intent flow
    for a new card: scripts/stripe_simulator.py) for the whole session."""
    binary = ROOT / ".venv" / "bin" / "localstripe"
    if not binary.exists():
        missing_service(f"localstripe is not installed at {binary}")
    port = _free_port()
    process = subprocess.Popen(
        [
            str(ROOT / ".venv" / "bin" / "python"),
            str(ROOT / "scripts" / "stripe_simulator.py"),
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            requests.get(f"{url}/v1/customers", auth=("sk_test_x", ""), timeout=1)
            break
        except requests.ConnectionError:
            if process.poll() is not None:
                break
            time.sleep(0.1)
    else:
        process.kill()
        missing_service("localstripe did not start")
    if process.poll() is not None:
        missing_service("localstripe exited at start")
    yield url
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture()
def proxy(localstripe: str) -> Iterator[FaultProxy]:
    fault_proxy = FaultProxy(localstripe).start()
    yield fault_proxy
    fault_proxy.stop()


def stripe_config(proxy_url: str, **overrides: Any) -> dict[str, Any]:
    config = {
        "STRIPE_API_BASE": proxy_url,
        "STRIPE_SECRET_KEY": "sk_test_portal",
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "STRIPE_JS_URL": "https://js.stripe.com/v3/",
        "STRIPE_TIMEOUT_SECONDS": 5,
    }
    config.update(overrides)
    return config


@pytest.fixture()
def stripe_app(app: Flask, proxy: FaultProxy) -> Iterator[Flask]:
    """The session's app, pointed at this test's proxy (the gateway is rebuilt)."""
    saved = {key: app.config[key] for key in stripe_config("") if key in app.config}
    app.config.update(stripe_config(proxy.url))
    app.extensions.pop("portal.gateway", None)
    yield app
    for key in stripe_config(""):
        app.config.pop(key, None)
    app.config.update(saved)
    app.extensions.pop("portal.gateway", None)


@dataclass
class PayWorld:
    app: Flask
    url: str


@pytest.fixture()
def pay_app(backend: str, tmp_path: Path, proxy: FaultProxy) -> Iterator[Flask]:
    """An app over its own fresh database: real commits, many threads."""
    with app_with_own_database(backend, tmp_path, "pay", **stripe_config(proxy.url)) as application:
        yield application


def gateway_for(proxy_url: str) -> Gateway:
    return Gateway(api_key="sk_test_portal", api_base=proxy_url, webhook_secret=WEBHOOK_SECRET)


def new_card(localstripe: str, number: str = SUCCESS) -> str:
    """What Stripe.js does in the browser: the card goes to Stripe, we get an id back."""
    response = requests.post(
        f"{localstripe}/v1/payment_methods",
        data={
            "type": "card",
            "card[number]": number,
            "card[exp_month]": "12",
            "card[exp_year]": "2031",
            "card[cvc]": "123",
        },
        auth=("sk_test_portal", ""),
        timeout=10,
    )
    response.raise_for_status()
    return str(response.json()["id"])


def customer_with_card(
    session: Session, gw: Gateway, localstripe: str, account: Account, number: str = SUCCESS
) -> PaymentMethod:
    """A Stripe customer for the account with one saved, attached card.

    The setup so far is committed first (in the test session that ends a savepoint; the
    outer rollback still undoes it): ensure_customer begins its own write.
    """
    session.commit()
    services.ensure_customer(session, account, gw, session.commit)
    method = new_card(localstripe, number)
    card = gw.attach_payment_method(
        method, customer=account.stripe_customer_id or "", idempotency_key=f"attach_{method}"
    )
    return services.save_card(session, account, card)


def seed_payer(
    session: Session,
    gw: Gateway,
    localstripe: str,
    amounts: tuple[int, ...] = (5000,),
    number: str = SUCCESS,
) -> tuple[Account, User, Any, PaymentMethod]:
    account = make_account(session)
    user = make_user(session, account=account)
    invoice = make_invoice(session, account, amounts)
    card = customer_with_card(session, gw, localstripe, account, number)
    return account, user, invoice, card


def sign(payload: bytes, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> str:
    stamp = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{stamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={mac}"


_event_counter = iter(range(1, 10**9))


def event_body(event_type: str, obj: dict[str, Any], event_id: str | None = None) -> bytes:
    return json.dumps(
        {
            "id": event_id or f"evt_test_{next(_event_counter)}_{time.time_ns()}",
            "object": "event",
            "type": event_type,
            "data": {"object": obj},
            "created": int(time.time()),
        }
    ).encode()


def confirm_setup(localstripe: str, client_secret: str, number: str = SUCCESS) -> str:
    """What Stripe.js confirmCardSetup does with the card Element (3-D Secure completed)."""
    setup_id = client_secret.split("_secret_")[0]
    response = requests.post(
        f"{localstripe}/v1/setup_intents/{setup_id}/confirm",
        json={
            "key": "pk_test_portal",
            "client_secret": client_secret,
            "payment_method_data": {
                "type": "card",
                "card": {"number": number, "exp_month": "12", "exp_year": "2031", "cvc": "123"},
            },
        },
        timeout=10,
    )
    body = response.json()
    if body.get("status") == "requires_action":
        body = requests.post(
            f"{localstripe}/v1/setup_intents/{setup_id}/confirm",
            json={"key": "pk_test_portal", "client_secret": client_secret},
            timeout=10,
        ).json()
    assert body["status"] == "succeeded", body
    return setup_id
