"""Ada questions one line of an invoice on her phone, with a photo as evidence, and follows it.

Debian's Chromium with the iPhone 13 profile (see tests/test_browser.py), axe-core on every
page in light and dark mode, no console errors, screenshots under artifacts/screenshots/.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.test_browser import (
    _assert_accessible,
    _page_errors,
    _screenshot,
    phone,  # noqa: F401 - the fixture, used by name
)

pytestmark = pytest.mark.browser


def _photo(tmp_path: Path) -> Path:
    """A photo-like PNG (a gradient), what a phone's screenshot of a bill would be."""
    from PIL import Image

    image = Image.new("RGB", (640, 480))
    image.putdata([(x % 256, (x * y) % 256, y % 256) for y in range(480) for x in range(640)])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    path = tmp_path / "photo-of-the-bill.png"
    path.write_bytes(buffer.getvalue())
    return path


def _both_schemes(page: Any, name: str) -> None:
    page.emulate_media(color_scheme="light")
    page.reload()
    _assert_accessible(page, name)
    _screenshot(page, f"{name}-iphone13")
    page.emulate_media(color_scheme="dark")
    page.reload()
    _assert_accessible(page, f"{name} in dark mode")
    _screenshot(page, f"{name}-iphone13-dark")
    page.emulate_media(color_scheme="light")


def test_ada_disputes_one_line_with_a_photo_on_her_phone(
    live_server: Any,
    phone: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    browser, iphone = phone
    context = browser.new_context(**iphone, reduced_motion="reduce")
    page = context.new_page()
    errors = _page_errors(page)
    page.goto(live_server.login_link("ada@example.com"))
    page.get_by_role("button", name="Sign in as ada@example.com").click()
    page.wait_for_url(f"{live_server.url}/")

    page.goto(f"{live_server.url}/invoices/ALS-0012")
    question = page.locator("a.lines-table__question").first
    expect(question).to_be_visible()
    _assert_accessible(page, "the invoice page with its questions")
    _screenshot(page, "invoice-question-iphone13")
    question.click()
    page.wait_for_url(re.compile(r".*/disputes/new\?invoice=ALS-0012&line=1$"))
    expect(page.get_by_role("heading", level=1, name="Question a charge")).to_be_visible()
    next_steps = page.get_by_test_id("next-steps")
    assert "business days: by" in next_steps.inner_text()
    assert page.locator('input[name="lines"][value="1"]').is_checked()
    _both_schemes(page, "dispute-new")

    page.locator('input[name="lines"][value="1"]').check()
    page.get_by_label("Amount you question (USD)").fill("20")
    page.get_by_label("The amount is wrong").check()
    page.get_by_label("Tell us what is wrong").fill(
        "We moved to 3 seats in October, but this still charges for 5."
    )
    page.get_by_label("Evidence (optional)").set_input_files(str(_photo(tmp_path)))
    page.get_by_role("button", name="Send my question").click()
    page.wait_for_url(re.compile(r".*/disputes/[A-Za-z0-9_-]+$"))

    assert "Question about invoice ALS-0012" in page.get_by_role("heading", level=1).inner_text()
    assert (
        "We answer within 2 business days; due"
        in page.get_by_test_id("response-clock").inner_text()
    )
    assert "Submitted" in page.get_by_test_id("timeline").inner_text()
    expect(page.get_by_role("link", name=re.compile("photo-of-the-bill.png"))).to_be_visible()
    _both_schemes(page, "dispute-detail")

    page.goto(f"{live_server.url}/disputes")
    assert "ALS-0012" in page.get_by_test_id("disputes").inner_text()
    _both_schemes(page, "disputes")
    assert errors == [], errors
    context.close()
