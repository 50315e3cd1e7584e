"""`make demo` for real: scripts/demo.py runs on free ports in a temporary instance folder, with
its own simulator, mailer and gunicorn, and is checked from outside as a newcomer would use it.

The SQLite run ends with Ctrl-C (everything stops cleanly); the PostgreSQL run (DATABASE_URL)
ends with its simulator dying, which must stop the whole demo with a message. Nothing here is
skipped in CI: the script needs only the project's own virtualenv.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from portal.config import DEMO_STRIPE_SECRET_KEY
from tests.conftest import ROOT, drop_database, fresh_database

SCRIPT = ROOT / "scripts" / "demo.py"
SIMULATOR = ROOT / "scripts" / "stripe_simulator.py"
DEMO_USERS = (
    "ada@example.com",
    "grace@example.com",
    "kenji@example.com",
    "support@example.com",
    "admin@example.com",
)
# NOTE: generous for a loaded 2-core machine; an idle one starts the demo in about 15 s.
START_SECONDS = 120
LINK = re.compile(r"^\s+(\S+@example\.com)\s+(http://\S+)$")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@dataclass
class Demo:
    process: subprocess.Popen[str]
    port: int
    stripe_port: int
    instance: Path
    database_url: str
    lines: list[str] = field(default_factory=list)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stripe(self) -> str:
        return f"http://127.0.0.1:{self.stripe_port}"

    def wait_for(self, what: Callable[[], bool], seconds: float, why: str) -> None:
        end = time.monotonic() + seconds
        while not what():
            if time.monotonic() > end:
                pytest.fail(f"{why} within {seconds} s; the demo said:\n{self.output}")
            time.sleep(0.2)

    def wait_for_line(self, text: str, seconds: float = START_SECONDS) -> None:
        self.wait_for(
            lambda: text in self.output or self.process.poll() is not None, seconds, repr(text)
        )
        if text not in self.output:
            time.sleep(0.5)  # the reader may still hold the last lines
            assert text in self.output, f"the demo ended without {text!r}:\n{self.output}"

    def stop(self) -> None:
        if self.process.poll() is None:
            with_group = _descendants(self.process.pid)
            self.process.kill()
            for pid in with_group:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
        self.process.wait(timeout=30)


def _run_demo(
    tmp_path: Path, *, port: int, stripe_port: int, database_url: str = ""
) -> Iterator[Demo]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("DATABASE_URL", "SECRET_KEY", "MAIL_", "BASE_URL", "STRIPE_"))
    }
    if database_url:
        env["DATABASE_URL"] = database_url
    instance = tmp_path / "instance"
    process = subprocess.Popen(
        [
            *(sys.executable, str(SCRIPT), "--port", str(port)),
            *("--stripe-port", str(stripe_port), "--instance", str(instance)),
        ],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    demo = Demo(process, port, stripe_port, instance, database_url)

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            demo.lines.append(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield demo
    finally:
        demo.stop()
        reader.join(timeout=5)


@pytest.fixture()
def demo(backend: str, tmp_path: Path) -> Iterator[Demo]:
    url = "" if backend == "sqlite" else fresh_database(backend, tmp_path, "demo")
    try:
        yield from _run_demo(
            tmp_path, port=_free_port(), stripe_port=_free_port(), database_url=url
        )
    finally:
        if url:
            drop_database(url)


def _database_url(demo: Demo) -> str:
    return demo.database_url or f"sqlite:///{demo.instance / 'portal.sqlite3'}"


def _adas_stripe_ids(demo: Demo) -> tuple[str, str]:
    engine = sa.create_engine(_database_url(demo))
    try:
        with engine.connect() as conn:
            row = conn.execute(
                sa.text(
                    "SELECT a.stripe_customer_id, m.stripe_payment_method_id FROM accounts a "
                    "JOIN payment_methods m ON m.account_id = a.id "
                    "WHERE a.invoice_prefix = 'ALS' AND m.detached_at IS NULL AND m.is_default"
                )
            ).one()
    finally:
        engine.dispose()
    return str(row[0]), str(row[1])


def _mail_to(demo: Demo, address: str) -> list[Path]:
    folder = demo.instance / "mail"
    if not folder.is_dir():
        return []
    return [p for p in folder.glob("*.eml") if f"To: {address}" in p.read_text(errors="replace")]


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html)
    assert found, "no CSRF token on the page"
    return found.group(1)


def test_the_demo_starts_every_part_and_its_links_mail_and_card_work(demo: Demo) -> None:
    started = time.monotonic()
    demo.wait_for_line("The demo is running")
    took = time.monotonic() - started
    assert demo.process.poll() is None, demo.output

    links = dict(m.groups() for line in demo.lines if (m := LINK.match(line)))
    assert set(links) == set(DEMO_USERS), demo.output
    assert all(link.startswith(f"{demo.url}/login/") for link in links.values())
    # The links come last, after every part said it is up.
    first_link = min(i for i, line in enumerate(demo.lines) if LINK.match(line))
    for part in ("database", "Stripe simulator", "portal", "webhooks", "demo data", "mail"):
        assert any(line.strip().startswith(part) for line in demo.lines[:first_link]), part
    assert "A fresh link when one has expired" in demo.output
    assert f"BASE_URL={demo.url}" in demo.output  # the fresh-link command names this port
    assert "warning" not in demo.output.lower() and "Traceback" not in demo.output

    health = requests.get(f"{demo.url}/healthz", timeout=5)
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    customers = requests.get(
        f"{demo.stripe}/v1/customers", auth=(DEMO_STRIPE_SECRET_KEY, ""), timeout=5
    )
    assert customers.status_code == 200

    # ada's saved card is real in this demo's simulator, attached to her customer.
    customer, card = _adas_stripe_ids(demo)
    assert not card.startswith("pm_demo_")
    method = requests.get(
        f"{demo.stripe}/v1/payment_methods/{card}", auth=(DEMO_STRIPE_SECRET_KEY, ""), timeout=5
    )
    assert method.status_code == 200 and method.json()["customer"] == customer

    # A printed link opens its confirm page on this demo's portal.
    assert requests.get(links["ada@example.com"], timeout=10).status_code == 200

    # Asking at /login delivers an email within seconds.
    browser = requests.Session()
    page = browser.get(f"{demo.url}/login", timeout=10)
    before = len(_mail_to(demo, "ada@example.com"))
    asked = time.monotonic()
    answer = browser.post(
        f"{demo.url}/login",
        data={"email": "ada@example.com", "csrf_token": _csrf(page.text)},
        timeout=10,
    )
    assert answer.status_code == 200
    demo.wait_for(
        lambda: len(_mail_to(demo, "ada@example.com")) > before, 8, "no email for ada arrived"
    )
    delivered = time.monotonic() - asked
    demo.wait_for(lambda: "mail to ada@example.com" in demo.output, 5, "the demo told of no mail")
    print(f"demo up in {took:.1f} s; email delivered {delivered:.1f} s after POST /login")

    parts = _descendants(demo.process.pid)
    assert len(parts) >= 4, parts  # simulator, job worker, gunicorn master and worker
    if demo.database_url:
        _the_simulator_dies_and_the_demo_stops(demo, parts)
    else:
        _ctrl_c_stops_everything(demo, parts)


def _ctrl_c_stops_everything(demo: Demo, parts: set[int]) -> None:
    demo.process.send_signal(signal.SIGINT)
    assert demo.process.wait(timeout=30) == 0, demo.output
    demo.wait_for(lambda: not any(_alive(pid) for pid in parts), 10, "parts outlived the demo")
    assert not _listening(demo.port) and not _listening(demo.stripe_port)
    demo.wait_for_line("The demo has stopped.", 5)


def _the_simulator_dies_and_the_demo_stops(demo: Demo, parts: set[int]) -> None:
    [simulator] = [
        pid for pid in parts if b"stripe_simulator.py" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    os.kill(simulator, signal.SIGKILL)
    assert demo.process.wait(timeout=30) == 1, demo.output
    demo.wait_for_line("make demo stopped: the Stripe simulator stopped", 5)
    assert "stripe-simulator.log" in demo.output
    demo.wait_for(lambda: not any(_alive(pid) for pid in parts), 10, "parts outlived the demo")
    assert not _listening(demo.port)


def test_a_port_taken_by_something_else_stops_the_demo_before_any_link(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = int(squatter.getsockname()[1])
        runs = _run_demo(tmp_path, port=_free_port(), stripe_port=taken)
        demo = next(runs)
        try:
            code = demo.process.wait(timeout=60)
        finally:
            runs.close()

    assert code != 0
    time.sleep(0.3)
    assert f"port {taken}, where the Stripe simulator should listen, is taken" in demo.output
    assert "another program" in demo.output and "make demo STRIPE_PORT=" in demo.output
    assert "/login/" not in demo.output and "Sign-in links" not in demo.output
    assert not (demo.instance / "portal.sqlite3").exists()  # it changed nothing


def test_a_part_that_fails_to_start_stops_the_demo_and_what_it_started(tmp_path: Path) -> None:
    """The database cannot be migrated (nothing listens where DATABASE_URL points): the simulator
    started before it must be stopped too, and no link is printed."""
    nowhere = f"postgresql+psycopg://postgres@127.0.0.1:{_free_port()}/none?connect_timeout=2"
    stripe_port = _free_port()
    runs = _run_demo(tmp_path, port=_free_port(), stripe_port=stripe_port, database_url=nowhere)
    demo = next(runs)
    try:
        code = demo.process.wait(timeout=90)
    finally:
        runs.close()

    assert code == 1
    assert "make demo stopped: migrating the database failed" in demo.output
    assert "migrate.log" in demo.output
    assert "/login/" not in demo.output and "Sign-in links" not in demo.output
    assert not _listening(stripe_port)


# Runs the demo's simulator with an audit hook that notes every open() of localstripe's shared file.
_AUDITED_SIMULATOR = """
import runpy, sys
log = open(sys.argv.pop(1), "a", buffering=1)
def hook(event, args):
    if event == "open" and str(args[0]) == "/tmp/localstripe.pickle":
        log.write(f"{args[1]}\\n")
sys.addaudithook(hook)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_the_demo_simulator_shares_no_state_file_with_other_localstripes(tmp_path: Path) -> None:
    """localstripe pickles every change to the machine-wide /tmp/localstripe.pickle (and, without
    --from-scratch, loads it at start); the demo's simulator must never open it: another
    instance would load our customers, or we would crash on its half-written file."""
    port = _free_port()
    opened = tmp_path / "opened.log"
    opened.write_text("")
    simulator = subprocess.Popen(
        [
            *(sys.executable, "-c", _AUDITED_SIMULATOR, str(opened), str(SIMULATOR)),
            *("--port", str(port), "--demo-id", "isolation"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        end = time.monotonic() + 30
        while True:
            try:
                who = requests.get(f"{base}/_config/portal-demo", timeout=1)
                break
            except requests.ConnectionError:
                assert simulator.poll() is None and time.monotonic() < end, "it did not start"
                time.sleep(0.1)
        assert who.json() == {"demo_id": "isolation", "state": "in memory"}
        key = (DEMO_STRIPE_SECRET_KEY, "")
        created = requests.post(
            f"{base}/v1/customers", data={"email": "ada@example.com"}, auth=key, timeout=5
        )
        assert created.status_code == 200
        found = requests.get(f"{base}/v1/customers/{created.json()['id']}", auth=key, timeout=5)
        assert found.json()["email"] == "ada@example.com"  # it keeps its state in memory
        assert opened.read_text() == "", "the simulator opened /tmp/localstripe.pickle"
    finally:
        simulator.terminate()
        simulator.wait(timeout=10)
