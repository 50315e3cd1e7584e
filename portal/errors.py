"""Named domain errors: what a rule of the portal says when it says no.

Pure Python (no Flask), so billing logic can raise them; `portal.http_errors` is the one place
that maps them, and HTTP errors, to responses.
"""

from __future__ import annotations

from collections.abc import Mapping


def N_(message: str) -> str:
    """Marks text for translation (pybabel extracts N_) where Flask-Babel may not be imported:
    domain rules raise errors in English and `portal.http_errors` translates them for display."""
    return message


class DomainError(Exception):
    """A rule of the portal said no. `message` is written for the customer."""

    status = 400
    title = N_("Something is not right")

    def __init__(
        self, message: str = "", *, params: Mapping[str, object] | None = None, **details: object
    ) -> None:
        # NOTE: `msgid` and `params` are kept apart so the page translates the sentence and then
        # fills in the values; `message` is the English text (logs, CLI, tests).
        self.msgid = message or self.title
        self.params = dict(params or {})
        self.message = self.msgid % self.params if self.params else self.msgid
        super().__init__(self.message)
        self.details = details


class NotFound(DomainError):
    status = 404
    title = N_("Not found")


class NotAllowed(DomainError):
    status = 403
    title = N_("Not allowed")


class ValidationFailed(DomainError):
    status = 422
    title = N_("Please check what you entered")

    def __init__(
        self,
        message: str = "",
        errors: dict[str, str] | None = None,
        *,
        params: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(message, params=params)
        self.errors = errors or {}


class Conflict(DomainError):
    status = 409
    title = N_("That changed in the meantime")


class PaymentFailed(DomainError):
    status = 402
    title = N_("The payment did not go through")

    def __init__(
        self,
        message: str = "",
        *,
        retryable: bool = False,
        params: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(message, params=params)
        self.retryable = retryable


class ServiceUnavailable(DomainError):
    status = 503
    title = N_("We are briefly unavailable")


class PendingChanges(RuntimeError):
    """A programming error: a write transaction was asked for while unflushed or flushed but
    uncommitted changes were waiting (they would have been committed silently)."""
