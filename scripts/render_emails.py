"""Render every email to HTML and to PNG (Chromium at phone width, light and dark mode).

    .venv/bin/python scripts/render_emails.py [--out docs/emails]

Builds one customer with one of everything in a throw-away SQLite database, queues each email
exactly as the portal does (portal.mail.queue_email), writes `<name>.html`, `<name>.txt` and
`<name>-light.png` / `<name>-dark.png` (390 px wide, full height) into the folder. Look at them.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def render(out: Path) -> list[Path]:
    from flask_migrate import upgrade

    from portal import clock, create_app
    from portal.auth.models import LoginToken  # noqa: F401
    from portal.extensions import db
    from portal.mail import queue_email
    from tests.notifications.email_world import EmailWorld, as_sent

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(
            {
                "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp}/emails.sqlite3",
                "SECRET_KEY": "render-emails",
                "SECRET_KEYS": ["render-emails"],
                "BASE_URL": "https://billing.example.com",
                "TESTING": True,
            }
        )
        written = []
        # NOTE: the day the tests use, so the sample dates read naturally.
        clock.set_source(clock.FrozenClock(datetime(2026, 11, 21, 9, 30, tzinfo=UTC)))
        with app.app_context():
            upgrade()
            world = EmailWorld(db.session)
            contexts = world.contexts()
            contexts["login_link"] = {
                "link": "https://billing.example.com/login/example-token",
                "minutes": app.config["LOGIN_TOKEN_MINUTES"],
                "user": world.user,
            }
            for name, context in contexts.items():
                email = queue_email(
                    db.session,
                    to=world.account.billing_email,
                    subject="",
                    template=name,
                    context=context,
                    account_id=None if name == "login_link" else world.account.id,
                )
                assert email is not None
                email = as_sent(db.session, email)
                (out / f"{name}.html").write_text(email.html_body)
                (out / f"{name}.txt").write_text(f"Subject: {email.subject}\n\n{email.text_body}")
                written.append(out / f"{name}.html")
            db.session.rollback()
    return written


def screenshot(pages: list[Path]) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        for scheme in ("light", "dark"):
            context = browser.new_context(
                viewport={"width": 390, "height": 844},
                device_scale_factor=2,
                color_scheme=scheme,
            )
            page = context.new_page()
            for html in pages:
                page.goto(html.as_uri())
                page.screenshot(
                    path=str(html.with_name(f"{html.stem}-{scheme}.png")), full_page=True
                )
            context.close()
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "emails"))
    args = parser.parse_args()
    pages = render(Path(args.out))
    screenshot(pages)
    print(f"{len(pages)} emails rendered to {args.out}")


if __name__ == "__main__":
    main()
