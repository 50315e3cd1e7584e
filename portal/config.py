"""Configuration from the environment, each setting with a safe development default."""

from __future__ import annotations

import logging
import os
import re
import secrets
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from portal.db import ENGINE_OPTIONS

# NOTE: localstripe accepts any key; these are the simulator's, never valid against real Stripe.
DEFAULT_STAFF_CREDIT_LIMITS = "USD=250,EUR=250,GBP=200,CHF=250,CAD=300,AUD=350,JPY=35000"
DEMO_STRIPE_SECRET_KEY = "sk_test_portal_demo"
DEMO_STRIPE_PUBLISHABLE_KEY = "pk_test_portal_demo"
DEMO_STRIPE_WEBHOOK_SECRET = "whsec_portal_demo"

log = logging.getLogger(__name__)


class UnsafeConfiguration(RuntimeError):
    """The settings would run the portal unsafely; it refuses to start (the message says why)."""


def _secret_keys(instance_path: Path) -> list[str]:
    configured = os.environ.get("SECRET_KEY", "").strip()
    if configured:
        return [k.strip() for k in configured.split(",") if k.strip()]
    key_file = instance_path / "secret_key"
    if not key_file.exists():
        instance_path.mkdir(parents=True, exist_ok=True)
        # NOTE: written with O_EXCL so two workers starting at once agree on one key.
        try:
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(48))
    return [key_file.read_text().strip()]


def _int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError as error:
        raise UnsafeConfiguration(f"{name} must be a whole number, not {value!r}.") from error


def _bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _database_url(instance_path: Path) -> str:
    url = os.environ.get("DATABASE_URL", "").strip()
    if not url:
        instance_path.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{instance_path / 'portal.sqlite3'}"
    # NOTE: hosting platforms hand out postgres:// URLs; SQLAlchemy wants a driver name.
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def from_environment(instance_path: Path) -> dict[str, Any]:
    """Read every setting of CONTRACT.md from the environment."""
    keys = _secret_keys(instance_path)
    base_url = os.environ.get("BASE_URL", "http://127.0.0.1:5000").rstrip("/")
    env = os.environ.get
    return {
        "SECRET_KEY": keys[0],
        "SECRET_KEY_FALLBACKS": keys[1:],
        "SECRET_KEYS": keys,
        # NOTE: production must name its key: a key file in instance/ is not shared by a second
        # machine and is lost with the container.
        "SECRET_KEY_FROM_ENVIRONMENT": bool(os.environ.get("SECRET_KEY", "").strip()),
        "TRUSTED_PROXIES": _int("TRUSTED_PROXIES", 0),
        "BASE_URL": base_url,
        "PREFERRED_URL_SCHEME": "https" if base_url.startswith("https://") else "http",
        "SQLALCHEMY_DATABASE_URI": _database_url(instance_path),
        "SQLALCHEMY_ENGINE_OPTIONS": dict(ENGINE_OPTIONS),
        "PORTAL_ENV": env("PORTAL_ENV", "development"),
        "PORTAL_TIMEZONE": env("PORTAL_TIMEZONE", "UTC"),
        "MAIL_SERVER": env("MAIL_SERVER", ""),
        "MAIL_PORT": int(env("MAIL_PORT", "25")),
        "MAIL_USERNAME": env("MAIL_USERNAME", ""),
        "MAIL_PASSWORD": env("MAIL_PASSWORD", ""),
        "MAIL_USE_TLS": _bool("MAIL_USE_TLS", False),
        "MAIL_FROM": env("MAIL_FROM", "Billing <billing@example.com>"),
        "MAIL_DIR": env("MAIL_DIR", str(instance_path / "mail")),
        "STRIPE_SECRET_KEY": env("STRIPE_SECRET_KEY", DEMO_STRIPE_SECRET_KEY),
        "STRIPE_PUBLISHABLE_KEY": env("STRIPE_PUBLISHABLE_KEY", DEMO_STRIPE_PUBLISHABLE_KEY),
        "STRIPE_WEBHOOK_SECRET": env("STRIPE_WEBHOOK_SECRET", DEMO_STRIPE_WEBHOOK_SECRET),
        "STRIPE_API_BASE": env("STRIPE_API_BASE", "https://api.stripe.com"),
        "STRIPE_JS_URL": env("STRIPE_JS_URL", "https://js.stripe.com/v3/"),
        "RATELIMIT_STORAGE_URI": env("RATELIMIT_STORAGE_URI", "memory://"),
        "RATELIMIT_HEADERS_ENABLED": False,
        "SESSION_COOKIE_NAME": "portal_session",
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_SECURE": base_url.startswith("https://"),
        "REMEMBER_COOKIE_DURATION": timedelta(days=0),
        "LOGIN_TOKEN_MINUTES": int(env("LOGIN_TOKEN_MINUTES", "10")),
        "SESSION_IDLE_MINUTES": int(env("SESSION_IDLE_MINUTES", "30")),
        "SESSION_ABSOLUTE_HOURS": int(env("SESSION_ABSOLUTE_HOURS", "12")),
        "STAFF_SESSION_IDLE_MINUTES": int(env("STAFF_SESSION_IDLE_MINUTES", "15")),
        "STAFF_SESSION_ABSOLUTE_HOURS": int(env("STAFF_SESSION_ABSOLUTE_HOURS", "8")),
        # Support staff may credit or refund up to this per resolution, in MAJOR units of each
        # currency ("USD=250,JPY=35000"); above it, or in a currency not listed, an admin
        # approves (portal.staff.resolution). Admins have no limit.
        "STAFF_CREDIT_LIMITS": env("STAFF_CREDIT_LIMITS", DEFAULT_STAFF_CREDIT_LIMITS),
        "BRAND_NAME": env("BRAND_NAME", "Northwind Cloud"),
        # Days an invoice of a subscription may be overdue before plan changes wait for payment.
        "SUBSCRIPTION_CHANGE_GRACE_DAYS": _int("SUBSCRIPTION_CHANGE_GRACE_DAYS", 14),
        "BRAND_COLOR": env("BRAND_COLOR", "#4338ca"),
        "BRAND_LOGO": env("BRAND_LOGO", "img/logo.svg"),
        # Emails: an absolute https URL of a square logo (PNG); empty shows the brand's initial.
        "BRAND_LOGO_URL": env("BRAND_LOGO_URL", ""),
        "BRAND_SUPPORT_EMAIL": env("BRAND_SUPPORT_EMAIL", ""),
        # Deep links in emails (sign in and open one object, once) stay valid this long.
        "DEEP_LINK_HOURS": _int("DEEP_LINK_HOURS", 72),
        # Dunning: reminder days before and after the due date, card retry days after a failed
        # automatic charge, and whether the subscription becomes past_due after the last retry.
        "DUNNING_BEFORE_DAYS": env("DUNNING_BEFORE_DAYS", "3"),
        "DUNNING_AFTER_DAYS": env("DUNNING_AFTER_DAYS", "1,7,14"),
        # Reminders written per short write transaction of the reminder run.
        "REMINDER_BATCH_SIZE": _int("REMINDER_BATCH_SIZE", 200),
        "CARD_RETRY_DAYS": env("CARD_RETRY_DAYS", "1,3,5,7"),
        "CARD_RETRY_PAST_DUE": _bool("CARD_RETRY_PAST_DUE", True),
        # Subscriptions: how many days ahead a trial's end and a pause's end are announced.
        "TRIAL_ENDING_NOTICE_DAYS": _int("TRIAL_ENDING_NOTICE_DAYS", 3),
        "RESUMING_NOTICE_DAYS": _int("RESUMING_NOTICE_DAYS", 3),
        "SELLER": {
            "name": env("SELLER_NAME", "Northwind Cloud Ltd."),
            "address": env("SELLER_ADDRESS", "1 Harbour Street\nBristol BS1 4RN\nUnited Kingdom"),
            "tax_id": env("SELLER_TAX_ID", "GB 123 4567 89"),
            "email": env("SELLER_EMAIL", "billing@example.com"),
        },
        "THANK_YOU_NOTE": env(
            "THANK_YOU_NOTE", "Thank you for your business. Questions? Just reply to this email."
        ),
        "WTF_CSRF_TIME_LIMIT": None,
        # Abuse limits (Flask-Limiter strings); per IP answers 429, per address stays silent.
        "LOGIN_IP_RATE_LIMIT": env("LOGIN_IP_RATE_LIMIT", "10 per minute;60 per hour"),
        # Per address: per client IP (a stranger spends only their own share), a cap over every
        # browser not recognised (mailbox floods), and the owner's signed-in browsers apart.
        "LOGIN_ADDRESS_RATE_LIMIT": env("LOGIN_ADDRESS_RATE_LIMIT", "5 per 15 minutes"),
        "LOGIN_ADDRESS_CAP": env("LOGIN_ADDRESS_CAP", "10 per hour;30 per day"),
        "LOGIN_DEVICE_RATE_LIMIT": env("LOGIN_DEVICE_RATE_LIMIT", "5 per 15 minutes"),
        "LOGIN_CONSUME_IP_RATE_LIMIT": env("LOGIN_CONSUME_IP_RATE_LIMIT", "20 per minute"),
        "TOTP_RATE_LIMIT": env("TOTP_RATE_LIMIT", "5 per minute;20 per hour"),
        # Outbox delivery: retries with exponential backoff, a lease so a crashed sender's rows
        # go out later, and a final "dead" state that keeps the message for staff to retry.
        "MAIL_BATCH_SIZE": int(env("MAIL_BATCH_SIZE", "50")),
        "MAIL_MAX_ATTEMPTS": int(env("MAIL_MAX_ATTEMPTS", "12")),
        "MAIL_RETRY_BASE_SECONDS": int(env("MAIL_RETRY_BASE_SECONDS", "30")),
        "MAIL_CLAIM_LEASE_SECONDS": int(env("MAIL_CLAIM_LEASE_SECONDS", "300")),
        "MAIL_TIMEOUT_SECONDS": int(env("MAIL_TIMEOUT_SECONDS", "20")),
        "MAX_CONTENT_LENGTH": 12 * 1024 * 1024,
        # The worker's job queue (portal/worker.py): redis://… in production; unset = a SQLite
        # file beside the database. Periodic jobs: WORKER_SCHEDULE_<JOB> cron lines.
        "JOB_QUEUE_URL": env("JOB_QUEUE_URL", ""),
        # Disputes (issue 11): support answers within this many business hours (16 = two
        # 9-to-17 days) of the merchant's week in PORTAL_TIMEZONE; evidence files up to
        # EVIDENCE_MAX_BYTES each, kept in ATTACHMENTS_DIR (outside static/).
        "DISPUTE_RESPONSE_BUSINESS_HOURS": int(env("DISPUTE_RESPONSE_BUSINESS_HOURS", "16")),
        "DISPUTE_BUSINESS_DAY_START": int(env("DISPUTE_BUSINESS_DAY_START", "9")),
        "DISPUTE_BUSINESS_DAY_END": int(env("DISPUTE_BUSINESS_DAY_END", "17")),
        "EVIDENCE_MAX_BYTES": int(env("EVIDENCE_MAX_BYTES", str(5 * 1024 * 1024))),
        "ATTACHMENTS_DIR": env("ATTACHMENTS_DIR", str(instance_path / "attachments")),
    }


# -- refusing unsafe settings at start ---------------------------------------------------------

_LIVE_KEY = re.compile(r"^(sk|rk)_live_")
_WORKERS_OPTION = re.compile(r"(?:^|\s)(?:-w|--workers)(?:\s+|=)(\d+)")


def _gunicorn_workers(environ: dict[str, str], argv: list[str]) -> int:
    """How many gunicorn workers this process is one of, as far as can be seen (1 if unknown).

    Looks at `WEB_CONCURRENCY` (gunicorn's default for --workers), `GUNICORN_CMD_ARGS` and,
    inside a gunicorn process, its own command line. A gunicorn.conf.py is not read.
    """
    counts = [1]
    concurrency = environ.get("WEB_CONCURRENCY", "").strip()
    if concurrency.isdigit():
        counts.append(int(concurrency))
    sources = [environ.get("GUNICORN_CMD_ARGS", "")]
    if argv and Path(argv[0]).name.startswith("gunicorn"):
        sources.append(" ".join(argv[1:]))
    for source in sources:
        counts.extend(int(n) for n in _WORKERS_OPTION.findall(source))
    return max(counts)


def check_settings(
    config: dict[str, Any],
    environ: dict[str, str] | None = None,
    argv: list[str] | None = None,
) -> None:
    """Refuse to start with settings that would run unsafely; warn loudly about risky ones.

    A live Stripe key means production: it needs a real webhook secret (the demo one is public),
    an https BASE_URL and a SECRET_KEY from the environment. Rate limits kept in memory are
    per process: with several workers each counts alone (a limit of 10 a minute let 19 through
    with 2 workers), so outside development that is refused when the workers can be seen, and
    warned about when they cannot.
    """
    environ = dict(os.environ) if environ is None else environ
    argv = sys.argv if argv is None else argv
    problems = []
    live = bool(_LIVE_KEY.match(str(config.get("STRIPE_SECRET_KEY") or "")))
    if live:
        webhook_secret = str(config.get("STRIPE_WEBHOOK_SECRET") or "").strip()
        if not webhook_secret or webhook_secret == DEMO_STRIPE_WEBHOOK_SECRET:
            problems.append(
                "STRIPE_WEBHOOK_SECRET is empty or the public demo value while STRIPE_SECRET_KEY "
                "is a live key: anyone could forge Stripe events. Set the endpoint's signing "
                "secret (whsec_…) from the Stripe dashboard."
            )
        if not str(config.get("BASE_URL", "")).startswith("https://"):
            problems.append(
                "BASE_URL must be https:// with a live Stripe key: sign-in links and session "
                "cookies must not travel in clear text."
            )
        if not config.get("SECRET_KEY_FROM_ENVIRONMENT"):
            problems.append(
                "SECRET_KEY must be set in the environment with a live Stripe key (a key "
                "generated into instance/ differs between machines and is lost with them)."
            )
    production = live or config.get("PORTAL_ENV", "development") != "development"
    try:
        proxies = int(config.get("TRUSTED_PROXIES", 0))
    except (TypeError, ValueError):
        proxies = -1
    if proxies < 0:
        problems.append("TRUSTED_PROXIES must be 0 or the number of proxies in front of it.")
    in_memory = str(config.get("RATELIMIT_STORAGE_URI", "memory://")).startswith("memory://")
    limits_on = config.get("RATELIMIT_ENABLED", True) and not config.get("TESTING")
    if in_memory and limits_on:
        workers = _gunicorn_workers(environ, argv)
        why = (
            "RATELIMIT_STORAGE_URI is memory://: every worker process counts the rate limits "
            "on its own, so {n} workers let about {n} times the configured number through. "
            "Set RATELIMIT_STORAGE_URI=redis://… (shared by all workers)."
        )
        if production and workers > 1:
            problems.append(why.format(n=workers))
        elif production:
            log.error(
                "%s With a single worker on a single machine this is correct; with several it "
                "is not, and this process cannot see how many there are.",
                why.format(n="N"),
            )
        elif workers > 1:
            log.warning("%s (allowed in development).", why.format(n=workers))
    if problems:
        raise UnsafeConfiguration(
            "The portal refuses to start with these settings:\n- " + "\n- ".join(problems)
        )
