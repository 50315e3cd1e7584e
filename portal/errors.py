"""Named domain errors: what a rule of the portal says when it says no.

Pure Python (no Flask), so billing logic can raise them; `portal.http_errors` is the one place
that maps them, and HTTP errors, to responses.
"""

from __future__ import annotations


class DomainError(Exception):
    """A rule of the portal said no. `message` is written for the customer."""

    status = 400
    title = "Something is not right"

    def __init__(self, message: str = "", **details: object) -> None:
        super().__init__(message or self.title)
        self.message = message or self.title
        self.details = details


class NotFound(DomainError):
    status = 404
    title = "Not found"


class NotAllowed(DomainError):
    status = 403
    title = "Not allowed"


class ValidationFailed(DomainError):
    status = 422
    title = "Please check what you entered"

    def __init__(self, message: str = "", errors: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or {}


class Conflict(DomainError):
    status = 409
    title = "That changed in the meantime"


class PaymentFailed(DomainError):
    status = 402
    title = "The payment did not go through"

    def __init__(self, message: str = "", *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class ServiceUnavailable(DomainError):
    status = 503
    title = "We are briefly unavailable"


class PendingChanges(RuntimeError):
    """A programming error: a write transaction was asked for while unflushed or flushed but
    uncommitted changes were waiting (they would have been committed silently)."""
