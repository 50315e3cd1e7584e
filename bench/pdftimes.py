"""First-render times of invoice PDFs, measured in a fresh process (`python -m bench.pdftimes URL`
prints one JSON line), calling the renderer (portal.billing.pdf.invoice_pdf) directly.

- cold: the first PDF of the process (imports WeasyPrint, loads fonts and the stylesheet);
- first render of a 1-page invoice in a warm process: invoices never rendered before, median;
- first render of the long (multi-page) invoice in a warm process, with its page count.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
import time
import zlib
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from bench.seed import BIG_PREFIX, LONG_INVOICE_SEQUENCE, SMALL_PREFIX

_PAGE = re.compile(rb"/Type\s*/Page(?![a-zA-Z])")
_STREAM = re.compile(rb"stream\r?\n(.*?)\r?\nendstream", re.S)


def page_count(pdf: bytes) -> int:
    """Page objects, looked for in the file and inside its compressed object streams."""
    count = len(_PAGE.findall(pdf))
    for raw in _STREAM.findall(pdf):
        try:
            count += len(_PAGE.findall(zlib.decompress(raw)))
        except zlib.error:
            continue
    return count


def measure(url: str) -> dict[str, Any]:
    from bench.inprocess import make_app
    from portal.billing.models import Invoice
    from portal.extensions import db

    app = make_app(url)
    from portal.billing import pdf

    def load(number: str) -> Invoice:
        invoice = db.session.scalar(
            select(Invoice)
            .where(Invoice.number == number)
            .options(selectinload(Invoice.lines), selectinload(Invoice.account))
        )
        if invoice is None:
            raise RuntimeError(f"no invoice {number}")
        return invoice

    def render(number: str) -> tuple[float, float, bytes]:
        """Wall and CPU milliseconds of one render (the CPU time shows the machine's noise)."""
        invoice = load(number)
        started, cpu = time.perf_counter(), time.process_time()
        content = pdf.invoice_pdf(invoice, page_size=pdf.PageSize.A4)
        wall_ms = (time.perf_counter() - started) * 1000
        return wall_ms, (time.process_time() - cpu) * 1000, content

    result: dict[str, Any] = {}
    with app.test_request_context(base_url=app.config["BASE_URL"]):
        result["cold_ms"], result["cold_cpu_ms"], cold_pdf = render(f"{SMALL_PREFIX}-0001")
        result["cold_pages"] = page_count(cold_pdf)
        warm, warm_cpu = [], []
        for sequence in range(2, 9):
            ms, cpu_ms, content = render(f"{SMALL_PREFIX}-{sequence:04d}")
            warm.append(ms)
            warm_cpu.append(cpu_ms)
            result["one_page_pages"] = page_count(content)
        result["one_page_ms"] = statistics.median(warm)
        result["one_page_cpu_ms"] = statistics.median(warm_cpu)
        result["one_page_all_ms"] = warm
        long_number = f"{BIG_PREFIX}-{LONG_INVOICE_SEQUENCE:04d}"
        result["long_ms"], result["long_cpu_ms"], long_pdf = render(long_number)
        result["long_pages"] = page_count(long_pdf)
        result["long_lines"] = len(load(long_number).lines)
        result["long_number"] = long_number
        db.session.remove()
    with app.app_context():
        db.engine.dispose()
    return result


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1])))
