"""What the subscription forms may carry, read into plain values (or a clear message).

Each form takes only its own fields: anything else in the body is refused before a service
sees it, so no field can ride along into a change.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date

from portal.errors import N_, ValidationFailed
from portal.forms import describe_character, forbidden_character
from portal.subscriptions import services
from portal.subscriptions.models import Plan, Subscription

_ALWAYS = frozenset({"csrf_token"})

CHANGE_FIELDS = frozenset(
    {"plan", "interval", "quantity", "timing", "version", "preview", "confirm", "from"}
)
CANCEL_FIELDS = frozenset({"when", "reason", "reason_text", "version"})
PAUSE_FIELDS = frozenset({"resume_on", "version", "from"})
VERSION_ONLY = frozenset({"version", "from"})


def only_fields(form: Mapping[str, str] | Iterable[str], allowed: frozenset[str]) -> None:
    """Refuse a body with fields this form does not have."""
    extra = sorted(set(form) - allowed - _ALWAYS)
    if extra:
        raise ValidationFailed(
            N_("This form does not take a field called “%(field)s”. Nothing was changed."),
            params={"field": extra[0][:40]},
        )


@dataclass(frozen=True)
class ChangeChoice:
    plan: str | None
    interval: str | None
    quantity: int | None
    timing: str | None


def change_choice(values: Mapping[str, str], subscription: Subscription) -> ChangeChoice:
    """The plan, interval, seats and timing a change form (or the preview's query) names."""
    plan = (values.get("plan") or "").strip()[:64] or None
    interval = (values.get("interval") or "").strip()[:8] or None
    raw_quantity = values.get("quantity")
    quantity = (
        services.parse_quantity(raw_quantity, default=subscription.quantity)
        if raw_quantity not in (None, "")
        else None
    )
    timing = (values.get("timing") or "").strip()[:16] or None
    if timing not in (None, "now", "period_end"):
        raise ValidationFailed(N_("Choose when the change should start."))
    return ChangeChoice(plan, interval, quantity, timing)


def version(values: Mapping[str, str]) -> int:
    return services.parse_version(values.get("version"))


@dataclass(frozen=True)
class CancelChoice:
    when: str
    reason: str
    reason_text: str


def cancel_choice(values: Mapping[str, str]) -> CancelChoice:
    when = (values.get("when") or "period_end").strip()
    reason = (values.get("reason") or "").strip()[:32]
    text = (values.get("reason_text") or "").strip()
    errors: dict[str, str] = {}
    if reason not in services.CANCEL_REASON_CODES:
        errors["reason"] = N_("Please choose a reason from the list.")
    if len(text) > 500:
        errors["reason_text"] = N_("Please keep it under 500 characters.")
    bad = forbidden_character(text, newlines=True)
    if bad is not None:
        raise ValidationFailed(
            N_(
                "Your note contains an invisible or control character (%(char)s). Please remove "
                "it and type the text again."
            ),
            params={"char": describe_character(bad)},
        )
    if errors:
        first = next(iter(errors.values()))
        raise ValidationFailed(first, errors)
    if when not in ("period_end", "now"):
        raise ValidationFailed(N_("Choose when the subscription should end."))
    return CancelChoice(when, reason, text)


def resume_on(values: Mapping[str, str], *, starts_on: date, plan: Plan) -> date:
    return services.parse_resume_on(values.get("resume_on"), starts_on=starts_on, plan=plan)
