"""Settings from the environment, and the start-up refusal of unsafe production settings."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from portal import create_app
from portal.config import (
    DEMO_STRIPE_WEBHOOK_SECRET,
    UnsafeConfiguration,
    _gunicorn_workers,
    check_settings,
    from_environment,
)
from tests.conftest import make_config

LIVE = {
    "STRIPE_SECRET_KEY": "sk_live_51Hx0000000000000000000000",
    "STRIPE_WEBHOOK_SECRET": "whsec_a_real_secret_from_the_dashboard",
    "BASE_URL": "https://billing.example.com",
    "SECRET_KEY_FROM_ENVIRONMENT": True,
    "RATELIMIT_STORAGE_URI": "redis://cache:6379/0",
    "TESTING": False,
}


def _check(**overrides: Any) -> None:
    check_settings({**LIVE, **overrides}, environ={}, argv=["flask"])


def test_safe_live_settings_start() -> None:
    _check()


@pytest.mark.parametrize("secret", ["", "   ", DEMO_STRIPE_WEBHOOK_SECRET])
def test_a_live_key_with_a_demo_or_empty_webhook_secret_is_refused(secret: str) -> None:
    with pytest.raises(UnsafeConfiguration, match="STRIPE_WEBHOOK_SECRET"):
        _check(STRIPE_WEBHOOK_SECRET=secret)


def test_a_restricted_live_key_counts_as_live() -> None:
    with pytest.raises(UnsafeConfiguration, match="STRIPE_WEBHOOK_SECRET"):
        _check(STRIPE_SECRET_KEY="rk_live_abc", STRIPE_WEBHOOK_SECRET=DEMO_STRIPE_WEBHOOK_SECRET)


def test_a_live_key_with_an_http_base_url_is_refused() -> None:
    with pytest.raises(UnsafeConfiguration, match="BASE_URL must be https"):
        _check(BASE_URL="http://billing.example.com")


def test_a_live_key_without_a_secret_key_in_the_environment_is_refused() -> None:
    with pytest.raises(UnsafeConfiguration, match="SECRET_KEY must be set"):
        _check(SECRET_KEY_FROM_ENVIRONMENT=False)


def test_every_problem_is_named_at_once() -> None:
    with pytest.raises(UnsafeConfiguration) as refused:
        _check(STRIPE_WEBHOOK_SECRET="", BASE_URL="http://x", SECRET_KEY_FROM_ENVIRONMENT=False)
    message = str(refused.value)
    assert "STRIPE_WEBHOOK_SECRET" in message and "BASE_URL" in message
    assert "SECRET_KEY must be set" in message


def test_test_keys_and_the_demo_defaults_start() -> None:
    check_settings(
        {
            "STRIPE_SECRET_KEY": "sk_test_portal_demo",
            "STRIPE_WEBHOOK_SECRET": DEMO_STRIPE_WEBHOOK_SECRET,
            "BASE_URL": "http://127.0.0.1:5000",
            "SECRET_KEY_FROM_ENVIRONMENT": False,
            "RATELIMIT_STORAGE_URI": "memory://",
        },
        environ={},
        argv=["flask"],
    )


@pytest.mark.parametrize(
    ("environ", "argv", "workers"),
    [
        ({}, ["flask"], 1),
        ({"WEB_CONCURRENCY": "3"}, ["flask"], 3),
        ({"GUNICORN_CMD_ARGS": "--bind 0.0.0.0:8000 --workers 4"}, ["x"], 4),
        ({"GUNICORN_CMD_ARGS": "-w 2"}, ["x"], 2),
        ({}, ["/srv/.venv/bin/gunicorn", "--workers=5", "wsgi:app"], 5),
        ({}, ["/usr/bin/python", "--workers", "5"], 1),  # not gunicorn: its arguments say nothing
    ],
)
def test_gunicorn_workers_are_seen_where_they_can_be(
    environ: dict[str, str], argv: list[str], workers: int
) -> None:
    assert _gunicorn_workers(environ, argv) == workers


def test_several_production_workers_on_in_memory_rate_limits_are_refused() -> None:
    with pytest.raises(UnsafeConfiguration, match="memory://") as refused:
        check_settings(
            {**LIVE, "RATELIMIT_STORAGE_URI": "memory://"},
            environ={"GUNICORN_CMD_ARGS": "--workers 2"},
            argv=["x"],
        )
    assert "2 workers" in str(refused.value)
    with pytest.raises(UnsafeConfiguration, match="memory://"):
        check_settings(
            {
                **LIVE,
                "STRIPE_SECRET_KEY": "sk_test_x",
                "PORTAL_ENV": "production",
                "RATELIMIT_STORAGE_URI": "memory://",
            },
            environ={},
            argv=["/venv/bin/gunicorn", "-w", "4", "wsgi:app"],
        )


def test_in_memory_rate_limits_in_production_are_warned_about_loudly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="portal.config"):
        check_settings({**LIVE, "RATELIMIT_STORAGE_URI": "memory://"}, environ={}, argv=["x"])
    [warning] = caplog.records
    assert warning.levelno == logging.ERROR
    assert "memory://" in warning.getMessage() and "redis://" in warning.getMessage()


def test_several_development_workers_on_in_memory_limits_only_warn(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="portal.config"):
        check_settings(
            {"RATELIMIT_STORAGE_URI": "memory://", "PORTAL_ENV": "development"},
            environ={"WEB_CONCURRENCY": "2"},
            argv=["x"],
        )
    [warning] = caplog.records
    assert warning.levelno == logging.WARNING
    assert "2 workers" in warning.getMessage()


def test_redis_rate_limits_with_many_workers_start_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="portal.config"):
        check_settings(LIVE, environ={"WEB_CONCURRENCY": "8"}, argv=["x"])
    assert caplog.records == []


def test_create_app_refuses_unsafe_settings(tmp_path: Path) -> None:
    """The check runs at start: create_app (and so `gunicorn wsgi:app`) fails with the reason."""
    url = f"sqlite:///{tmp_path / 'unsafe.sqlite3'}"
    with pytest.raises(UnsafeConfiguration, match="STRIPE_WEBHOOK_SECRET"):
        create_app(
            make_config(url, STRIPE_SECRET_KEY="sk_live_x", STRIPE_WEBHOOK_SECRET="", TESTING=False)
        )


def test_secret_key_from_the_environment_is_noted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SECRET_KEY", raising=False)
    assert from_environment(tmp_path)["SECRET_KEY_FROM_ENVIRONMENT"] is False
    monkeypatch.setenv("SECRET_KEY", "new-key,old-key")
    settings = from_environment(tmp_path)
    assert settings["SECRET_KEY_FROM_ENVIRONMENT"] is True
    assert settings["SECRET_KEYS"] == ["new-key", "old-key"]


def test_trusted_proxies_is_read_and_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TRUSTED_PROXIES", raising=False)
    assert from_environment(tmp_path)["TRUSTED_PROXIES"] == 0
    monkeypatch.setenv("TRUSTED_PROXIES", "2")
    assert from_environment(tmp_path)["TRUSTED_PROXIES"] == 2
    monkeypatch.setenv("TRUSTED_PROXIES", "yes")
    with pytest.raises(UnsafeConfiguration, match="TRUSTED_PROXIES must be a whole number"):
        from_environment(tmp_path)
    with pytest.raises(UnsafeConfiguration, match="TRUSTED_PROXIES must be 0"):
        check_settings({"TRUSTED_PROXIES": -1}, environ={}, argv=["x"])
