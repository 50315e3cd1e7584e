"""Helpers for the sign-in tests: apps with CSRF or rate limits on, links read from the outbox."""

from __future__ import annotations

import http.cookiejar
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal import create_app
from portal.extensions import limiter
from portal.notifications.models import OutboxEmail
from tests.conftest import _fresh_g_per_request, make_config

LINK = re.compile(r"https?://[^\s\"<>]+/login/[A-Za-z0-9_.\-]+")


def outbox_link(session: Session, address: str) -> str:
    """The sign-in link of the newest email queued for the address."""
    email = session.scalars(
        select(OutboxEmail)
        .where(OutboxEmail.to_address == address)
        .order_by(OutboxEmail.id.desc())
        .limit(1)
    ).first()
    assert email is not None, f"no email queued for {address}"
    match = LINK.search(email.text_body)
    assert match, email.text_body
    return match.group(0)


def path_of(link: str) -> str:
    return "/login/" + link.rsplit("/login/", 1)[1]


@pytest.fixture()
def make_app(app: Flask, session: Session) -> Iterator[Callable[..., Flask]]:
    """Another app over the same (rolled-back) database, with some settings changed.

    The Limiter object is shared by every app of the process, so its state is put back after.
    """
    saved = {
        name: getattr(limiter, name, None)
        for name in ("enabled", "_storage", "_limiter", "initialized")
    }

    contexts = []

    def build(**overrides: Any) -> Flask:
        config = make_config(app.config["SQLALCHEMY_DATABASE_URI"], **overrides)
        other = create_app(config)
        _fresh_g_per_request(other)
        # NOTE: an open app context, as for the suite's app: a request's teardown would
        # otherwise close the shared test session and undo the test's data.
        context = other.app_context()
        context.push()
        contexts.append(context)
        return other

    yield build
    for context in reversed(contexts):
        context.pop()
    for name, value in saved.items():
        setattr(limiter, name, value)


class Browser:
    """A tiny HTTP client with a cookie jar (the CSRF token lives in the session cookie)."""

    def __init__(self) -> None:
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )

    def get(self, url: str) -> tuple[int, str]:
        return self._open(urllib.request.Request(url))

    def post(self, url: str, data: dict[str, str]) -> tuple[int, str]:
        body = urllib.parse.urlencode(data).encode()
        return self._open(urllib.request.Request(url, data=body, method="POST"))

    def _open(self, request: urllib.request.Request) -> tuple[int, str]:
        try:
            with self.opener.open(request, timeout=20) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()
