"""Many pay requests for one invoice at once: exactly one PaymentIntent, one charge, one ledger
entry. Real threads, real commits, each backend's own lock (FOR UPDATE / BEGIN IMMEDIATE)."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from portal.billing.models import Invoice, InvoiceStatus, LedgerEntry
from portal.extensions import db
from portal.payments import services
from portal.payments.models import Payment, PaymentAttempt
from tests.conftest import login_as
from tests.payments.conftest import gateway_for, seed_payer
from tests.payments.fault_proxy import FaultProxy


@dataclass
class Outcome:
    statuses: list[int]
    intents_created: int
    confirms: int
    attempts: int
    payments: int
    ledger_payments: int
    invoice_status: str

    @property
    def exactly_once(self) -> bool:
        return (
            all(status == 303 for status in self.statuses)
            and self.intents_created == 1
            and self.confirms == 1
            and self.attempts == 1
            and self.payments == 1
            and self.ledger_payments == 1
            and self.invoice_status == InvoiceStatus.PAID
        )


def _setup(app: Flask, proxy: FaultProxy, localstripe: str, clients: int):  # type: ignore[no-untyped-def]
    with app.app_context():
        account, user, invoice, card = seed_payer(db.session, gateway_for(proxy.url), localstripe)
        db.session.commit()
        ids = (account.id, invoice.id, invoice.number, card.public_id)
        signed_in = []
        for _ in range(clients):
            client = app.test_client()
            login_as(client, user)
            db.session.commit()
            signed_in.append(client)
    return ids, signed_in


def _outcome(
    app: Flask, proxy: FaultProxy, account_id: int, invoice_id: int, statuses: list[int]
) -> Outcome:
    with app.app_context():
        session = db.session
        count = lambda model, *where: session.scalar(  # noqa: E731
            select(func.count()).select_from(model).where(*where)
        )
        return Outcome(
            statuses=statuses,
            intents_created=sum(
                1
                for f in proxy.state.forwarded
                if f.method == "POST" and f.path == "/v1/payment_intents" and f.status == 200
            ),
            confirms=proxy.count("POST", "/confirm"),
            attempts=count(PaymentAttempt, PaymentAttempt.account_id == account_id),
            payments=count(Payment, Payment.account_id == account_id),
            ledger_payments=count(
                LedgerEntry, LedgerEntry.account_id == account_id, LedgerEntry.kind == "payment"
            ),
            invoice_status=session.get(Invoice, invoice_id).status,
        )


def _pay_all(
    clients: list[FlaskClient], number: str, card: str, names: list[str] | None = None
) -> tuple[list[int], list[threading.Thread]]:
    statuses: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(clients))

    def pay(client: FlaskClient) -> None:
        barrier.wait()
        response = client.post(f"/invoices/{number}/pay", data={"payment_method": card})
        with lock:
            statuses.append(response.status_code)

    threads = [
        threading.Thread(target=pay, args=(c,), name=(names[i] if names else f"payer-{i}"))
        for i, c in enumerate(clients)
    ]
    return statuses, threads


@pytest.mark.parametrize("concurrent", [2, 10, 50])
def test_concurrent_pay_requests_charge_exactly_once(
    pay_app: Flask, proxy: FaultProxy, localstripe: str, concurrent: int
) -> None:
    (account_id, invoice_id, number, card), clients = _setup(
        pay_app, proxy, localstripe, concurrent
    )
    statuses, threads = _pay_all(clients, number, card)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    outcome = _outcome(pay_app, proxy, account_id, invoice_id, statuses)
    assert outcome.exactly_once, outcome
    assert len(statuses) == concurrent


def _interleaved(
    app: Flask, proxy: FaultProxy, localstripe: str, monkeypatch: pytest.MonkeyPatch
) -> Outcome:
    """Request A reads "no live attempt" and pauses; request B runs; then A goes on."""
    (account_id, invoice_id, number, card), clients = _setup(app, proxy, localstripe, 2)
    a_has_read = threading.Event()
    release_a = threading.Event()
    original = services.live_attempt_for

    def pausing(session, ids):  # type: ignore[no-untyped-def]
        found = original(session, ids)
        if threading.current_thread().name == "A" and not a_has_read.is_set():
            a_has_read.set()
            release_a.wait(timeout=30)
        return found

    monkeypatch.setattr(services, "live_attempt_for", pausing)
    statuses: list[int] = []

    def pay(client: FlaskClient) -> None:
        statuses.append(
            client.post(f"/invoices/{number}/pay", data={"payment_method": card}).status_code
        )

    a = threading.Thread(target=pay, args=(clients[0],), name="A")
    b = threading.Thread(target=pay, args=(clients[1],), name="B")
    a.start()
    assert a_has_read.wait(timeout=30)
    b.start()
    b.join(timeout=0.5)  # with the guards, B waits for A's lock: let A go on
    release_a.set()
    a.join()
    b.join()
    return _outcome(app, proxy, account_id, invoice_id, statuses)


def test_interleaved_requests_with_the_guards_charge_once(
    pay_app: Flask, proxy: FaultProxy, localstripe: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcome = _interleaved(pay_app, proxy, localstripe, monkeypatch)
    assert outcome.exactly_once, outcome


def _remove_guards(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """No row lock, no BEGIN IMMEDIATE (neither the request's nor a service's), no partial
    unique index."""
    from portal import db as unit_of_work

    def no_lock(session, account, numbers):  # type: ignore[no-untyped-def]
        return list(
            session.scalars(
                select(Invoice).where(Invoice.account_id == account.id, Invoice.number.in_(numbers))
            )
        )

    monkeypatch.setattr(services, "lock_invoices", no_lock)
    monkeypatch.setattr(services, "begin_locked_write", lambda session: None)
    monkeypatch.setattr(unit_of_work, "_in_write_request", lambda: False)
    with app.app_context():
        db.session.execute(sa.text("DROP INDEX uq_payment_attempt_items_live_invoice"))
        db.session.commit()


def test_without_the_lock_and_the_unique_index_the_same_test_fails(
    pay_app: Flask, proxy: FaultProxy, localstripe: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Proof that the test above can fail: the same interleaving without the guards charges
    twice (PostgreSQL) or breaks one request (SQLite refuses the stale writer)."""
    _remove_guards(pay_app, monkeypatch)
    outcome = _interleaved(pay_app, proxy, localstripe, monkeypatch)
    print(f"guards removed: {outcome}")
    assert not outcome.exactly_once, outcome
