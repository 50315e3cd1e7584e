"""The only module that talks to Stripe. Everything else speaks in the small types below.

Configured by STRIPE_SECRET_KEY, STRIPE_API_BASE (real Stripe, or localstripe in the demo and
the tests) and STRIPE_WEBHOOK_SECRET. The library's own retries are off: our code retries with
the same idempotency key, so a retry can never become a second charge.

Time: each call waits at most STRIPE_TIMEOUT_SECONDS, and all the calls of one web request
together at most STRIPE_REQUEST_BUDGET_SECONDS (see `Budget`), which is kept well under the web
server's worker timeout: a request that runs out answers "processing" instead of being killed.
"""

from __future__ import annotations

import contextvars
import logging
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import stripe
from flask import current_app, g, has_request_context

from portal.errors import N_, DomainError, PaymentFailed, ServiceUnavailable

log = logging.getLogger(__name__)

# NOTE: stripe-python logs whole response bodies (client secrets included) at DEBUG; our logs
# must never carry them, whatever level the application runs at.
logging.getLogger("stripe").setLevel(logging.WARNING)

WEBHOOK_TOLERANCE_SECONDS = 300
DEFAULT_TIMEOUT_SECONDS = 10.0
# NOTE: gunicorn kills a sync worker after --timeout seconds (30 by default) with an empty 500;
# the Stripe calls of one request must end well before that, database waits included.
DEFAULT_REQUEST_BUDGET_SECONDS = 15.0
# NOTE: a call with less time than this left is not started: it could not get an answer.
MIN_CALL_SECONDS = 0.5

# Stripe's decline codes, in words a customer understands.
DECLINE_WORDS = {
    "card_declined": "Your card was declined. Please use another card or contact your bank.",
    "insufficient_funds": "Your card has insufficient funds.",
    "expired_card": "Your card has expired.",
    "incorrect_cvc": "The security code (CVC) is incorrect.",
    "processing_error": "Your bank could not process the payment. Please try again.",
    "payment_intent_authentication_failure": (
        "The card's verification (3-D Secure) did not succeed, so nothing was charged."
    ),
    "authentication_required": "Your bank asks you to confirm this payment.",
}


class GatewayUnavailable(ServiceUnavailable):
    """No answer from Stripe (network, timeout, 5xx, 429): the outcome is UNKNOWN, not failed."""

    title = "We could not reach the payment provider"
    outcome = "unknown"

    def __init__(self, message: str = "") -> None:
        super().__init__(
            message
            or N_(
                "We could not reach the payment provider. If a charge was started it is being "
                "checked; you will not be charged twice."
            )
        )


class CardDeclined(PaymentFailed):
    """A card decline, with Stripe's code and (when Stripe names it) the PaymentIntent it left in
    `requires_payment_method`: a confirmed create that declines answers with an error, not the
    intent."""

    def __init__(self, message: str, *, code: str = "", intent_id: str | None = None) -> None:
        super().__init__(message, retryable=False)
        self.code = code
        self.intent_id = intent_id


class GatewayRejected(DomainError):
    """Stripe understood the request and refused it (not a card decline)."""

    status = 409
    title = N_("The payment provider refused this request")


@dataclass(frozen=True)
class Intent:
    """A PaymentIntent or SetupIntent as the portal needs it. The client secret is never stored."""

    id: str
    status: str
    amount: int
    currency: str
    customer: str | None
    payment_method: str | None
    client_secret: str
    latest_charge: str | None = None
    failure_code: str = ""
    failure_message: str = ""
    metadata: dict[str, str] | None = None
    # The card it is paid with, when Stripe sent it along (retrieve expands it).
    card: Card | None = None


@dataclass(frozen=True)
class Card:
    id: str
    customer: str | None
    brand: str
    last4: str
    exp_month: int
    exp_year: int


@dataclass(frozen=True)
class Charge:
    """A charge as Stripe knows it: what was paid and how much of it was refunded."""

    id: str
    payment_intent: str | None
    amount: int
    amount_refunded: int
    currency: str


@dataclass(frozen=True)
class Dispute:
    """A card dispute (chargeback) as Stripe knows it."""

    id: str
    charge: str | None
    payment_intent: str | None
    amount: int
    currency: str
    reason: str
    status: str
    # Issue 11: the deadline for our evidence, and the money moved for it (a withdrawal with
    # its fee, a reinstatement when won) as Stripe's balance transactions.
    evidence_due_by: datetime | None = None
    balance_transactions: tuple[DisputeFunds, ...] = ()


@dataclass(frozen=True)
class DisputeFunds:
    """One movement of money for a dispute: negative `amount` is taken from us, positive is
    given back; `fee` is what Stripe charged (negative when it returned its fee)."""

    id: str
    amount: int
    fee: int
    currency: str


@dataclass(frozen=True)
class RefundResult:
    id: str
    status: str
    amount: int


def decline_words(code: str | None, message: str | None = None) -> str:
    """Stripe's reason for a decline in plain words."""
    if code and code in DECLINE_WORDS:
        return DECLINE_WORDS[code]
    return message or DECLINE_WORDS["card_declined"]


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(name, default)
    try:
        return getattr(obj, name)
    except AttributeError:
        return default


def _intent(obj: Any) -> Intent:
    error = _get(obj, "last_payment_error") or _get(obj, "last_setup_error")
    charge = _get(obj, "latest_charge")
    metadata = _get(obj, "metadata")
    if metadata is not None and hasattr(metadata, "to_dict"):
        metadata = metadata.to_dict()
    method = _get(obj, "payment_method")
    card = None
    if method is not None and not isinstance(method, str):
        card, method = _card(method), _get(method, "id")
    return Intent(
        id=obj.id,
        status=obj.status,
        amount=int(_get(obj, "amount", 0) or 0),
        currency=str(_get(obj, "currency", "") or "").upper(),
        customer=_get(obj, "customer"),
        payment_method=method,
        card=card,
        client_secret=_get(obj, "client_secret", "") or "",
        latest_charge=charge if isinstance(charge, str) or charge is None else charge.id,
        failure_code=str(_get(error, "code", "") or ""),
        failure_message=str(_get(error, "message", "") or ""),
        metadata={str(k): str(v) for k, v in dict(metadata or {}).items()},
    )


def _card(obj: Any) -> Card:
    card = _get(obj, "card")
    return Card(
        id=obj.id,
        customer=_get(obj, "customer"),
        brand=str(_get(card, "brand", "card") or "card"),
        last4=str(_get(card, "last4", "0000") or "0000"),
        exp_month=int(_get(card, "exp_month", 1) or 1),
        exp_year=int(_get(card, "exp_year", 2000) or 2000),
    )


def _charge(obj: Any) -> Charge:
    intent = _get(obj, "payment_intent")
    return Charge(
        id=obj.id,
        payment_intent=intent if isinstance(intent, str) or intent is None else intent.id,
        amount=int(_get(obj, "amount", 0) or 0),
        amount_refunded=int(_get(obj, "amount_refunded", 0) or 0),
        currency=str(_get(obj, "currency", "") or "").upper(),
    )


def _dispute(obj: Any) -> Dispute:
    charge = _get(obj, "charge")
    intent = _get(obj, "payment_intent")
    return Dispute(
        id=obj.id,
        charge=charge if isinstance(charge, str) or charge is None else charge.id,
        payment_intent=intent if isinstance(intent, str) or intent is None else intent.id,
        amount=int(_get(obj, "amount", 0) or 0),
        currency=str(_get(obj, "currency", "") or "").upper(),
        reason=str(_get(obj, "reason", "") or ""),
        status=str(_get(obj, "status", "") or ""),
        evidence_due_by=_timestamp(_get(_get(obj, "evidence_details"), "due_by")),
        balance_transactions=tuple(
            DisputeFunds(
                id=str(_get(bt, "id", "") or ""),
                amount=int(_get(bt, "amount", 0) or 0),
                fee=int(_get(bt, "fee", 0) or 0),
                currency=str(_get(bt, "currency", "") or "").upper(),
            )
            for bt in (_get(obj, "balance_transactions") or ())
            if not isinstance(bt, str) and _get(bt, "id")
        ),
    )


# NOTE: a PaymentIntent read with its card: a card entered for one payment is saved from it.
_WITH_CARD = {"expand": ["payment_method"]}


def _timestamp(value: Any) -> datetime | None:
    """A Stripe time (seconds since the epoch) as an aware UTC datetime."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return datetime.fromtimestamp(int(value), UTC)


# The per-call timeout of the call in progress (set by Gateway._call, read by the HTTP client).
_call_timeout: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "stripe_call_timeout", default=None
)


class _BudgetedRequestsClient(stripe.RequestsClient):
    """stripe's requests client, with each call's timeout cut to what the budget has left."""

    @property  # type: ignore[override]
    def _timeout(self) -> float:
        cut = _call_timeout.get()
        return self._full_timeout if cut is None else min(cut, self._full_timeout)

    @_timeout.setter
    def _timeout(self, value: float) -> None:  # money-safe: seconds
        self._full_timeout = float(value)  # money-safe: seconds


def seconds_setting(name: str, default: float) -> float:  # money-safe: seconds
    """A positive number of seconds from the app's config, else the environment, else default."""
    raw = current_app.config.get(name) or os.environ.get(name)
    try:
        value = float(raw) if raw else default  # money-safe: seconds
    except (TypeError, ValueError):
        log.warning("%s=%r is not a number of seconds; using %s", name, raw, default)
        return default
    return value if value > 0 else default


class Budget:
    """The Stripe time one web request may spend, over all its calls and retries.

    It starts with the request's first call and lives in `flask.g`, so every request has its
    own; outside a request (CLI, jobs) there is none and only the per-call timeout applies.
    """

    @staticmethod
    def remaining() -> float | None:
        if not has_request_context():
            return None
        deadline = g.get("stripe_deadline")
        if deadline is None:
            seconds = seconds_setting(
                "STRIPE_REQUEST_BUDGET_SECONDS", DEFAULT_REQUEST_BUDGET_SECONDS
            )
            deadline = g.stripe_deadline = time.monotonic() + seconds
        return float(deadline - time.monotonic())  # money-safe: seconds


class BudgetSpent(GatewayUnavailable):
    """The request's Stripe time is used up: the call was not started, its outcome is unknown."""


class Gateway:
    """One Stripe client. Every method maps Stripe's errors to the portal's domain errors."""

    def __init__(
        self,
        *,
        api_key: str,
        api_base: str,
        webhook_secret: str,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,  # money-safe: seconds
    ) -> None:
        self.webhook_secret = webhook_secret
        self.client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base.rstrip("/")},
            max_network_retries=0,
            http_client=_BudgetedRequestsClient(timeout=timeout),
        )

    # -- errors -----------------------------------------------------------------------------

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        remaining = Budget.remaining()
        if remaining is not None and remaining < MIN_CALL_SECONDS:
            log.warning("stripe %s: not started, the request's Stripe time is used up", what)
            raise BudgetSpent()
        token = _call_timeout.set(remaining)
        try:
            return self._mapped(what, fn, *args, **kwargs)
        finally:
            _call_timeout.reset(token)

    def _mapped(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except stripe.CardError as error:
            code = getattr(error, "code", None) or ""
            intent = _get(getattr(error, "error", None), "payment_intent")
            raise CardDeclined(
                decline_words(code, error.user_message),
                code=code,
                intent_id=_get(intent, "id") if intent is not None else None,
            ) from error
        except (stripe.APIConnectionError, stripe.RateLimitError) as error:
            log.warning("stripe %s: no answer (%s)", what, type(error).__name__)
            raise GatewayUnavailable() from error
        except stripe.APIError as error:
            log.warning("stripe %s: server error %s", what, error.http_status)
            raise GatewayUnavailable() from error
        except stripe.StripeError as error:
            status = getattr(error, "http_status", None) or 0
            if status >= 500 or status == 429:
                raise GatewayUnavailable() from error
            log.warning("stripe %s refused: %s %s", what, status, type(error).__name__)
            raise GatewayRejected(error.user_message or "The payment provider refused this.") from (
                error
            )

    @staticmethod
    def _options(idempotency_key: str | None) -> dict[str, Any]:
        return {"idempotency_key": idempotency_key} if idempotency_key else {}

    # -- customers --------------------------------------------------------------------------

    def create_customer(
        self, *, email: str, name: str, account_ref: str, idempotency_key: str
    ) -> str:
        customer = self._call(
            "customer.create",
            self.client.v1.customers.create,
            params={"email": email, "name": name, "metadata": {"account": account_ref}},
            options=self._options(idempotency_key),
        )
        return str(customer.id)

    # -- payment intents ----------------------------------------------------------------------

    def create_payment_intent(
        self,
        *,
        amount_minor: int,
        currency: str,
        customer: str,
        payment_method: str | None,
        metadata: dict[str, str],
        idempotency_key: str,
        off_session: bool = False,
        setup_future_usage: str | None = None,
    ) -> Intent:
        """Create a PaymentIntent. With `off_session` it is confirmed in the same call, with the
        customer away (a saved card charged by the portal): a decline raises CardDeclined.
        `setup_future_usage="off_session"` saves the card the browser confirms it with."""
        params: dict[str, Any] = {
            "amount": amount_minor,
            "currency": currency.lower(),
            "customer": customer,
            "payment_method_types": ["card"],
            "metadata": metadata,
        }
        if payment_method:
            params["payment_method"] = payment_method
        if off_session:
            params["confirm"] = True
            params["off_session"] = True
        if setup_future_usage:
            params["setup_future_usage"] = setup_future_usage
        obj = self._call(
            "payment_intent.create",
            self.client.v1.payment_intents.create,
            params=params,
            options=self._options(idempotency_key),
        )
        return _intent(obj)

    def confirm_payment_intent(self, intent_id: str, *, idempotency_key: str) -> Intent:
        """Confirm on the server. A decline raises PaymentFailed; 3-D Secure answers
        `requires_action` and the browser finishes it with the client secret."""
        obj = self._call(
            "payment_intent.confirm",
            self.client.v1.payment_intents.confirm,
            intent_id,
            options=self._options(idempotency_key),
        )
        return _intent(obj)

    def retrieve_payment_intent(self, intent_id: str) -> Intent:
        """The intent, with the card it is paid with (`Intent.card`)."""
        return _intent(
            self._call(
                "payment_intent.retrieve",
                self.client.v1.payment_intents.retrieve,
                intent_id,
                params=_WITH_CARD,
            )
        )

    def cancel_payment_intent(self, intent_id: str, *, idempotency_key: str) -> Intent:
        return _intent(
            self._call(
                "payment_intent.cancel",
                self.client.v1.payment_intents.cancel,
                intent_id,
                options=self._options(idempotency_key),
            )
        )

    # -- setup intents and payment methods ----------------------------------------------------

    def create_setup_intent(self, *, customer: str, idempotency_key: str) -> Intent:
        obj = self._call(
            "setup_intent.create",
            self.client.v1.setup_intents.create,
            params={"customer": customer, "usage": "off_session", "payment_method_types": ["card"]},
            options=self._options(idempotency_key),
        )
        return _intent(obj)

    def retrieve_setup_intent(self, intent_id: str) -> Intent:
        return _intent(
            self._call("setup_intent.retrieve", self.client.v1.setup_intents.retrieve, intent_id)
        )

    def retrieve_payment_method(self, method_id: str) -> Card:
        return _card(
            self._call(
                "payment_method.retrieve", self.client.v1.payment_methods.retrieve, method_id
            )
        )

    def list_payment_methods(self, customer: str) -> list[Card]:
        result = self._call(
            "payment_method.list",
            self.client.v1.payment_methods.list,
            params={"customer": customer, "type": "card"},
        )
        return [_card(pm) for pm in result.data]

    def attach_payment_method(self, method_id: str, *, customer: str, idempotency_key: str) -> Card:
        return _card(
            self._call(
                "payment_method.attach",
                self.client.v1.payment_methods.attach,
                method_id,
                params={"customer": customer},
                options=self._options(idempotency_key),
            )
        )

    def detach_payment_method(self, method_id: str) -> None:
        self._call("payment_method.detach", self.client.v1.payment_methods.detach, method_id)

    # -- lookups that may find nothing ----------------------------------------------------------

    @staticmethod
    def _missing_is_none(fn: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except stripe.InvalidRequestError as error:
                if getattr(error, "http_status", None) == 404:
                    return None
                raise

        return call

    def find_customer(self, customer_id: str) -> str | None:
        """The customer's id when Stripe knows it (and it is not deleted); None otherwise."""
        obj = self._call(
            "customer.retrieve",
            self._missing_is_none(self.client.v1.customers.retrieve),
            customer_id,
        )
        if obj is None or _get(obj, "deleted", False):
            return None
        return str(obj.id)

    def find_payment_method(self, method_id: str) -> Card | None:
        """The card when Stripe knows it; None when it does not."""
        obj = self._call(
            "payment_method.retrieve",
            self._missing_is_none(self.client.v1.payment_methods.retrieve),
            method_id,
        )
        return None if obj is None else _card(obj)

    def find_payment_intent(self, intent_id: str) -> Intent | None:
        """The PaymentIntent when Stripe knows it; None when it does not."""
        obj = self._call(
            "payment_intent.retrieve",
            self._missing_is_none(self.client.v1.payment_intents.retrieve),
            intent_id,
            params=_WITH_CARD,
        )
        return None if obj is None else _intent(obj)

    def find_setup_intent(self, intent_id: str) -> Intent | None:
        """The SetupIntent when Stripe knows it; None when it does not."""
        obj = self._call(
            "setup_intent.retrieve",
            self._missing_is_none(self.client.v1.setup_intents.retrieve),
            intent_id,
        )
        return None if obj is None else _intent(obj)

    def find_charge(self, charge_id: str) -> Charge | None:
        """The charge (with what was refunded of it) when Stripe knows it; None otherwise."""
        obj = self._call(
            "charge.retrieve", self._missing_is_none(self.client.v1.charges.retrieve), charge_id
        )
        return None if obj is None else _charge(obj)

    def find_dispute(self, dispute_id: str) -> Dispute | None:
        """The dispute when Stripe knows it; None otherwise."""
        obj = self._call(
            "dispute.retrieve", self._missing_is_none(self.client.v1.disputes.retrieve), dispute_id
        )
        return None if obj is None else _dispute(obj)

    def create_test_card(
        self, *, number: str, exp_month: int, exp_year: int, idempotency_key: str
    ) -> Card:
        """A card PaymentMethod from a raw TEST card number, for the demo's simulator only
        (portal/payments/demo_sync.py refuses real Stripe). Real cards never reach our servers:
        the browser sends them to Stripe."""
        obj = self._call(
            "payment_method.create",
            self.client.v1.payment_methods.create,
            params={
                "type": "card",
                "card": {
                    "number": number,
                    "exp_month": exp_month,
                    "exp_year": exp_year,
                    "cvc": "123",
                },
            },
            options=self._options(idempotency_key),
        )
        return _card(obj)

    # -- refunds ------------------------------------------------------------------------------

    def create_refund(
        self, *, payment_intent: str, amount_minor: int, idempotency_key: str
    ) -> RefundResult:
        obj = self._call(
            "refund.create",
            self.client.v1.refunds.create,
            params={"payment_intent": payment_intent, "amount": amount_minor},
            options=self._options(idempotency_key),
        )
        return RefundResult(id=obj.id, status=obj.status, amount=int(obj.amount))

    # -- webhooks -----------------------------------------------------------------------------

    def verify_signature(self, payload: bytes, signature: str | None) -> None:
        """Verify the signature on the raw body (300 s tolerance); ValueError when it is bad.

        NOTE: only the signature: the body is parsed by the caller, which refuses what is not
        an event object with a 400 (stripe's own construct_event fails on a JSON array).
        """
        if not signature:
            raise ValueError("missing Stripe-Signature header")
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError("the body is not UTF-8") from error
        try:
            stripe.WebhookSignature.verify_header(
                text, signature, self.webhook_secret, tolerance=WEBHOOK_TOLERANCE_SECONDS
            )
        except stripe.SignatureVerificationError as error:
            raise ValueError("bad signature") from error

    # -- events (reconcile, issue 12) ---------------------------------------------------------

    def list_events(
        self,
        *,
        ending_before: str | None = None,
        starting_after: str | None = None,
        limit: int = 100,
    ) -> EventPage:
        """One page of Stripe's events, newest first. `ending_before=<id>` is the page of events
        right after that one (walking forward in time); none of both is the newest page."""
        params: dict[str, Any] = {"limit": limit}
        if ending_before:
            params["ending_before"] = ending_before
        if starting_after:
            params["starting_after"] = starting_after
        result = self._call("event.list", self.client.v1.events.list, params=params)
        return EventPage(
            events=[_plain(event) for event in result.data], has_more=bool(result.has_more)
        )


def gateway() -> Gateway:
    """The app's gateway, built once per app from its configuration."""
    app = current_app
    existing = app.extensions.get("portal.gateway")
    if existing is None:
        existing = Gateway(
            api_key=app.config["STRIPE_SECRET_KEY"],
            api_base=app.config["STRIPE_API_BASE"],
            webhook_secret=app.config["STRIPE_WEBHOOK_SECRET"],
            timeout=seconds_setting("STRIPE_TIMEOUT_SECONDS", DEFAULT_TIMEOUT_SECONDS),
        )
        app.extensions["portal.gateway"] = existing
    return existing


# -- events (reconcile, issue 12) -------------------------------------------------------------


@dataclass(frozen=True)
class EventPage:
    events: list[dict[str, Any]]  # newest first, as plain dicts
    has_more: bool


def _plain(obj: Any) -> Any:
    """A Stripe object as plain dicts and lists (stripe 16 objects are not dicts)."""
    if hasattr(obj, "to_dict"):
        obj = obj.to_dict()
    if isinstance(obj, dict):
        return {str(key): _plain(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [_plain(value) for value in obj]
    return obj


class _Fields(dict[str, Any]):
    """A plain dict read like a Stripe object (attribute access), for the converters above."""

    def __getattr__(self, name: str) -> Any:
        try:
            value = self[name]
        except KeyError as missing:
            raise AttributeError(name) from missing
        return _Fields(value) if isinstance(value, dict) else value

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        value = super().get(name, default)
        return _Fields(value) if isinstance(value, dict) else value


_EVENT_OBJECTS: dict[str, Any] = {
    "payment_intent": _intent,
    "charge": _charge,
    "payment_method": _card,
    "dispute": _dispute,
}


def event_object(event: dict[str, Any]) -> Any:
    """The object an event read from Stripe's API carries, as the gateway hands it out (None for
    a kind it does not convert). Only for events fetched from Stripe with our key: a webhook's
    body is not trusted this way (its handlers fetch the object)."""
    obj = ((event.get("data") or {}).get("object")) or {}
    convert = _EVENT_OBJECTS.get(str(obj.get("object", "")))
    return None if convert is None else convert(_Fields(obj))
