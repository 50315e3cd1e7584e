"""The reference page of the benchmark (bench/bare.py) renders exactly 50 invoices or refuses."""

from __future__ import annotations

import re
from pathlib import Path

from bench.bare import ROWS, create_bare_app
from portal.accounts.models import Account
from portal.extensions import db
from tests.conftest import app_with_own_database
from tests.factories import make_account, make_invoice


def _rows(body: str) -> int:
    return len(re.findall(r"<tr>\s*<td>", body))


def test_reference_refuses_fewer_than_50_invoices_and_renders_exactly_50(
    backend: str, tmp_path: Path
) -> None:
    with app_with_own_database(backend, tmp_path, "bare") as app:
        url = app.config["SQLALCHEMY_DATABASE_URI"]
        with app.app_context():
            account = make_account(db.session)
            account_id = account.id
            for _ in range(ROWS - 1):
                make_invoice(db.session, account)
            db.session.commit()
        bare = create_bare_app(url)
        try:
            short = bare.test_client().get("/rows")
            assert short.status_code == 500
            assert f"has {ROWS - 1}" in short.get_data(as_text=True)
            assert "X-Bench-Rows" not in short.headers

            with app.app_context():
                account = db.session.get(Account, account_id)
                make_invoice(db.session, account)
                make_invoice(db.session, account)
                db.session.commit()
            full = bare.test_client().get("/rows")
            assert full.status_code == 200
            assert full.headers["X-Bench-Rows"] == str(ROWS)
            assert _rows(full.get_data(as_text=True)) == ROWS
        finally:
            bare.extensions["bench_engine"].dispose()
