"""Links in emails: absolute, built from BASE_URL (never from the Host header of a request),
and buildable where no request exists (the reconcile command, the worker)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import current_app


def absolute_url(endpoint: str, **values: Any) -> str:
    """`BASE_URL` + the path of `endpoint`, e.g. https://billing.example.com/payments/abc."""
    base = urlsplit(current_app.config["BASE_URL"])
    adapter = current_app.url_map.bind(
        base.netloc, script_name=base.path or "/", url_scheme=base.scheme or "https"
    )
    return adapter.build(endpoint, values, force_external=True)
