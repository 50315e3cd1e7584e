"""Configuration from the environment, each setting with a safe development default."""

from __future__ import annotations

import os
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Any

# NOTE: localstripe accepts any key; these are the simulator's, never valid against real Stripe.
DEMO_STRIPE_SECRET_KEY = "sk_test_portal_demo"
DEMO_STRIPE_PUBLISHABLE_KEY = "pk_test_portal_demo"
DEMO_STRIPE_WEBHOOK_SECRET = "whsec_portal_demo"
LOCAL_STRIPE = "http://127.0.0.1:8420"


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
        "BASE_URL": base_url,
        "PREFERRED_URL_SCHEME": "https" if base_url.startswith("https://") else "http",
        "SQLALCHEMY_DATABASE_URI": _database_url(instance_path),
        "SQLALCHEMY_ENGINE_OPTIONS": {"pool_pre_ping": True},
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
        "BRAND_NAME": env("BRAND_NAME", "Northwind Cloud"),
        "BRAND_COLOR": env("BRAND_COLOR", "#4338ca"),
        "BRAND_LOGO": env("BRAND_LOGO", "img/logo.svg"),
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
        "LOGIN_ADDRESS_RATE_LIMIT": env("LOGIN_ADDRESS_RATE_LIMIT", "5 per 15 minutes"),
        "LOGIN_CONSUME_IP_RATE_LIMIT": env("LOGIN_CONSUME_IP_RATE_LIMIT", "20 per minute"),
        "TOTP_RATE_LIMIT": env("TOTP_RATE_LIMIT", "5 per minute;20 per hour"),
        # Outbox delivery: retries with exponential backoff, a lease so a crashed sender's rows
        # go out later, and a final "failed" state that keeps the message for an operator.
        "MAIL_BATCH_SIZE": int(env("MAIL_BATCH_SIZE", "50")),
        "MAIL_MAX_ATTEMPTS": int(env("MAIL_MAX_ATTEMPTS", "12")),
        "MAIL_RETRY_BASE_SECONDS": int(env("MAIL_RETRY_BASE_SECONDS", "30")),
        "MAIL_CLAIM_LEASE_SECONDS": int(env("MAIL_CLAIM_LEASE_SECONDS", "300")),
        "MAIL_TIMEOUT_SECONDS": int(env("MAIL_TIMEOUT_SECONDS", "20")),
        "MAX_CONTENT_LENGTH": 12 * 1024 * 1024,
    }
