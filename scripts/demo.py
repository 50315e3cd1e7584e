"""`make demo`: the portal with everything it needs, on this machine, with zero setup.

    .venv/bin/python scripts/demo.py [--port 5000] [--stripe-port 8420] [--instance DIR]

In order: start a Stripe simulator of the demo's own, migrate the database (SQLite in the instance
folder unless DATABASE_URL names another), start the background worker (`portal worker`: the
outbox into DIR/mail/ unless MAIL_SERVER is set, and every scheduled job) and the portal
(gunicorn), register the simulator's webhook once the portal answers, seed the demo data (which
makes the saved card real in that simulator), and only when every part answers, print the
sign-in links. If any part does not start, or stops later, the demo says which, where its log
is, stops the rest and exits non-zero: a demo whose mail or simulator is dead must not look alive.
Ctrl-C (or SIGTERM) stops everything.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from base64 import b64encode
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from portal.config import (  # noqa: E402  (the checkout's own package, found via ROOT)
    DEMO_STRIPE_PUBLISHABLE_KEY,
    DEMO_STRIPE_SECRET_KEY,
    DEMO_STRIPE_WEBHOOK_SECRET,
)

# NOTE: taken before anything here changes os.environ: what the reader's own shell holds.
CALLER_ENV = dict(os.environ)
PYTHON = sys.executable
FLASK = [PYTHON, "-m", "flask", "--app", "wsgi"]
# NOTE: the pay path keeps each request's Stripe budget below the worker timeout; a graceful stop
# waits as long, so a payment in flight when the demo stops finishes instead of being cut off.
WORKER_TIMEOUT_SECONDS = 60
START_DEADLINE_SECONDS = 45.0
STOP_DEADLINE_SECONDS = 15.0


class DemoFailed(Exception):
    """A part of the demo did not start or stopped; the message says which and where to look."""

    def __init__(self, message: str, log: Path | None = None) -> None:
        super().__init__(message)
        self.log = log


class Stop(BaseException):
    """Ctrl-C or SIGTERM (a BaseException: no `except Exception` takes it for a failure)."""


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    grace: float = STOP_DEADLINE_SECONDS


@dataclass
class Demo:
    port: int
    stripe_port: int
    instance: Path
    env: dict[str, str] = field(default_factory=dict)
    children: list[Child] = field(default_factory=list)
    demo_id: str = field(default_factory=lambda: secrets.token_hex(8))

    @property
    def logs(self) -> Path:
        return self.instance / "log"

    @property
    def portal_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stripe_url(self) -> str:
        return f"http://127.0.0.1:{self.stripe_port}"

    @property
    def mail_dir(self) -> Path:
        return Path(self.env["MAIL_DIR"])

    @property
    def mail_server(self) -> str:
        return self.env.get("MAIL_SERVER", "")


def shown(path: Path | str) -> str:
    """A path as the reader would type it from where they are."""
    path = Path(path)
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def say(line: str = "") -> None:
    print(line, flush=True)


# -- settings ------------------------------------------------------------------------------------


def secret_key_for(instance: Path) -> str:
    """The instance's signing key, created once (as the portal itself does for instance/)."""
    key_file = instance / "secret_key"
    if not key_file.exists():
        try:
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(48))
    return key_file.read_text().strip()


def settings(demo: Demo) -> dict[str, str]:
    """The children's environment: the caller's, with the demo's own parts filled in."""
    env = dict(CALLER_ENV)
    given = {name: env.get(name, "").strip() for name in ("DATABASE_URL", "SECRET_KEY", "MAIL_DIR")}
    env.update(
        BASE_URL=env.get("BASE_URL", "").strip() or demo.portal_url,
        DATABASE_URL=given["DATABASE_URL"] or f"sqlite:///{demo.instance / 'portal.sqlite3'}",
        SECRET_KEY=given["SECRET_KEY"] or secret_key_for(demo.instance),
        MAIL_DIR=given["MAIL_DIR"] or str(demo.instance / "mail"),
        # NOTE: the worker's queue in this demo's folder (whatever the database), so two demos
        # on one machine never take each other's jobs.
        JOB_QUEUE_URL=env.get("JOB_QUEUE_URL", "").strip()
        or f"sqlite:///{demo.instance / 'huey.sqlite3'}",
        # NOTE: always this demo's simulator and its keys, whatever the shell holds: the demo
        # never reaches real Stripe, nor a simulator whose state belongs to someone else.
        STRIPE_API_BASE=demo.stripe_url,
        STRIPE_JS_URL=f"{demo.stripe_url}/js.stripe.com/v3/",
        STRIPE_SECRET_KEY=DEMO_STRIPE_SECRET_KEY,
        STRIPE_PUBLISHABLE_KEY=DEMO_STRIPE_PUBLISHABLE_KEY,
        STRIPE_WEBHOOK_SECRET=DEMO_STRIPE_WEBHOOK_SECRET,
        PYTHONUNBUFFERED="1",
    )
    return env


def database_shown(url: str) -> str:
    if url.startswith("sqlite:///"):
        return shown(url.removeprefix("sqlite:///"))
    parts = urllib.parse.urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def fresh_link_command(demo: Demo) -> str:
    """`portal login-link` as the reader must type it to reach this demo's database and keys."""
    defaults = {
        "BASE_URL": "http://127.0.0.1:5000",
        "DATABASE_URL": f"sqlite:///{ROOT / 'instance' / 'portal.sqlite3'}",
    }
    words = [
        f"{name}={shlex.quote(demo.env[name])}"
        for name, default in defaults.items()
        if demo.env[name] != default and CALLER_ENV.get(name, "").strip() != demo.env[name]
    ]
    here = Path.cwd() == ROOT
    if not CALLER_ENV.get("SECRET_KEY", "").strip() and demo.instance != ROOT / "instance":
        key_file = demo.instance / "secret_key"
        words.append(
            f'SECRET_KEY="$(cat {shlex.quote(shown(key_file) if here else str(key_file))})"'
        )
    flask = Path(PYTHON).parent / "flask"
    command = " ".join(
        [*words, shown(flask) if here else str(flask), "--app wsgi portal login-link"]
    )
    # NOTE: `--app wsgi` is found in the checkout, so from elsewhere the command goes there first.
    return f"{command} EMAIL" if here else f"cd {shlex.quote(str(ROOT))} && {command} EMAIL"


# -- ports and HTTP ------------------------------------------------------------------------------


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def holder_of(port: int) -> str:
    """Who listens on the port, as far as `ss` can tell (nothing when it cannot)."""
    try:
        out = subprocess.run(
            ["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, timeout=5
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    found = re.search(r'users:\(\("([^"]+)",pid=(\d+)', out)
    return f" ({found.group(1)}, pid {found.group(2)})" if found else ""


def http_get(url: str, *, timeout: float = 2.0, key: str = "") -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if key:
        request.add_header("Authorization", "Basic " + b64encode(f"{key}:".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def what_answers(port: int) -> str:
    """A few words on what listens on a port the demo wanted."""
    base = f"http://127.0.0.1:{port}"
    try:
        status, body = http_get(f"{base}/_config/portal-demo", timeout=1)
        if status == 200 and b"demo_id" in body:
            return (
                "the Stripe simulator of another `make demo` (another checkout, or still running)"
            )
        status, _ = http_get(f"{base}/js.stripe.com/v3/", timeout=1)
        if status == 200:
            return "a Stripe simulator that is not this demo's (its state belongs to someone else)"
    except (OSError, ValueError, http.client.HTTPException):
        pass
    return "another program"


def free_port_after(port: int, avoid: set[int]) -> int:
    candidate = port + 1
    while (candidate in avoid or listening(candidate)) and candidate < port + 100:
        candidate += 1
    return candidate


def require_free(port: int, what: str, variable: str, avoid: set[int]) -> None:
    if not listening(port):
        return
    raise DemoFailed(
        f"port {port}, where the {what} should listen, is taken by {what_answers(port)}"
        f"{holder_of(port)}. The demo does not share it: stop that program, or choose another "
        f"port: make demo {variable}={free_port_after(port, avoid)}"
    )


# -- processes -----------------------------------------------------------------------------------


def start(demo: Demo, name: str, command: Sequence[str], log: Path, grace: float = 0) -> Child:
    handle = log.open("wb")
    # NOTE: a session of its own, so Ctrl-C reaches only this script, which stops the parts in
    # order; and a gunicorn master and its workers stop together (signals go to the group).
    process = subprocess.Popen(
        list(command),
        cwd=ROOT,
        env=demo.env,
        stdin=subprocess.DEVNULL,
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    handle.close()
    child = Child(name, process, log, grace or STOP_DEADLINE_SECONDS)
    demo.children.append(child)
    return child


def flask_command(demo: Demo, what: str, args: Sequence[str], log: Path) -> str:
    """`flask --app wsgi ARGS`, run in this process; its output, or DemoFailed with its log.

    NOTE: in process, so the app is imported once for the migration, the seeding and the links
    instead of once per command (each start costs seconds on a small machine).
    """
    import traceback

    import click
    from flask.cli import cli

    os.environ.update(demo.env)
    out = io.StringIO()
    failure = ""
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            cli.main(["--app", "wsgi", *args], prog_name="flask", standalone_mode=False)
    except click.ClickException as error:
        failure = error.format_message()
        out.write(f"Error: {failure}\n")
    except Exception as error:  # noqa: BLE001 - whatever it was, it is reported with its log
        failure = f"{type(error).__name__}: {error}"
        out.write(traceback.format_exc())
    finally:
        log.write_text(out.getvalue())
    if failure:
        raise DemoFailed(f"{what} failed ({failure.splitlines()[0][:300]})", log)
    return out.getvalue()


def alive_or_fail(child: Child, doing: str) -> None:
    code = child.process.poll()
    if code is not None:
        raise DemoFailed(f"the {child.name} exited while {doing} (exit code {code})", child.log)


def wait_until(
    child: Child, what: str, ready: Callable[[], bool], deadline: float = START_DEADLINE_SECONDS
) -> None:
    """Poll `ready` until it is true; fail when the child dies or the deadline passes."""
    end = time.monotonic() + deadline
    while True:
        alive_or_fail(child, f"waiting for {what}")
        try:
            if ready():
                return
        except (OSError, ValueError, http.client.HTTPException):
            pass
        if time.monotonic() > end:
            raise DemoFailed(
                f"the {child.name} did not come up in {deadline:.0f} s ({what} never answered)",
                child.log,
            )
        time.sleep(0.2)


def stop_all(demo: Demo) -> None:
    """TERM every part (its whole process group), newest first; KILL what outlives its grace."""
    for child in reversed(demo.children):
        if child.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.process.pid, signal.SIGTERM)
    for child in reversed(demo.children):
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.process.wait(timeout=child.grace)
        # NOTE: the group too: a worker whose master died is still in it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.process.pid, signal.SIGKILL)
        child.process.wait()
    demo.children.clear()


# -- the parts -----------------------------------------------------------------------------------


def start_simulator(demo: Demo) -> Child:
    log = demo.logs / "stripe-simulator.log"
    command = [
        PYTHON,
        str(ROOT / "scripts" / "stripe_simulator.py"),
        "--port",
        str(demo.stripe_port),
        "--demo-id",
        demo.demo_id,
    ]
    return start(demo, "Stripe simulator", command, log)


def simulator_is_ours(demo: Demo) -> bool:
    status, body = http_get(f"{demo.stripe_url}/_config/portal-demo", timeout=1)
    if status != 200 or json.loads(body).get("demo_id") != demo.demo_id:
        return False
    status, _ = http_get(f"{demo.stripe_url}/v1/customers", timeout=2, key=DEMO_STRIPE_SECRET_KEY)
    return status == 200


def register_webhook(demo: Demo, simulator: Child) -> str:
    target = f"{demo.env['BASE_URL']}/webhooks/stripe"
    data = urllib.parse.urlencode({"url": target, "secret": DEMO_STRIPE_WEBHOOK_SECRET}).encode()
    request = urllib.request.Request(f"{demo.stripe_url}/_config/webhooks/portal", data=data)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            if response.status == 200:
                return target
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    except OSError as error:
        raise DemoFailed(f"the webhook could not be registered ({error})", simulator.log) from error
    raise DemoFailed(f"the simulator refused the webhook (HTTP {status})", simulator.log)


def start_mailer(demo: Demo) -> Child:
    """The background worker (`portal worker`): it delivers the outbox and runs every job."""
    log = demo.logs / "worker.log"
    return start(demo, "worker", [*FLASK, "portal", "worker"], log)


def start_portal(demo: Demo) -> Child:
    log = demo.logs / "portal.log"
    command = [
        PYTHON,
        "-m",
        "gunicorn",
        "--bind",
        f"127.0.0.1:{demo.port}",
        # NOTE: one process, several threads: the in-memory rate limits of the embedded default
        # are then exact (several processes would each count on their own).
        "--workers",
        "1",
        "--threads",
        "4",
        "--timeout",
        str(WORKER_TIMEOUT_SECONDS),
        "--graceful-timeout",
        str(WORKER_TIMEOUT_SECONDS),
        "--access-logfile",
        "-",
        "--error-logfile",
        "-",
        *no_control_socket(),
        "wsgi:app",
    ]
    return start(demo, "portal (gunicorn)", command, log, grace=WORKER_TIMEOUT_SECONDS + 5)


def no_control_socket() -> list[str]:
    """gunicorn 25.1+ opens a control socket at one path per user (~/.gunicorn/gunicorn.ctl), which
    every other gunicorn of that user also takes: the demo's must not take theirs, nor they its."""
    from gunicorn.config import KNOWN_SETTINGS

    if any(setting.name == "control_socket_disable" for setting in KNOWN_SETTINGS):
        return ["--no-control-socket"]
    return []


def portal_is_healthy(demo: Demo) -> bool:
    status, body = http_get(f"{demo.portal_url}/healthz", timeout=2)
    return status == 200 and json.loads(body).get("status") == "ok"


def mint_links(demo: Demo, emails: Sequence[str]) -> list[tuple[str, str]]:
    """A fresh sign-in link per demo user, from the `portal login-link` command itself."""
    links = []
    for email in emails:
        log = demo.logs / "login-link.log"
        for attempt in range(1, 4):
            try:
                output = flask_command(
                    demo, f"`portal login-link {email}`", ["portal", "login-link", email], log
                )
                break
            except DemoFailed as failed:
                # NOTE: SQLite refuses a write from a transaction that began reading before
                # another writer (a webhook the seeding caused) committed: run it again.
                if attempt == 3 or "database is locked" not in str(failed):
                    raise
                time.sleep(0.5)
        link = output.strip().splitlines()[-1] if output.strip() else ""
        if not link.startswith(demo.env["BASE_URL"]):
            raise DemoFailed(f"`portal login-link {email}` printed no link", log)
        links.append((email, link))
    return links


def demo_users() -> list[str]:
    from portal.demo import CUSTOMERS, STAFF

    return [customer.email for customer in CUSTOMERS] + [email for email, _, _ in STAFF]


# -- running ------------------------------------------------------------------------------------


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in text[-lines:])


def new_mail(demo: Demo, seen: set[str]) -> list[str]:
    """A line for each .eml file the worker wrote since the last look."""
    try:
        names = sorted(p.name for p in demo.mail_dir.glob("*.eml"))
    except OSError:
        return []
    lines = []
    for name in names:
        if name in seen:
            continue
        seen.add(name)
        path = demo.mail_dir / name
        with path.open("rb") as fh:
            headers = BytesHeaderParser().parse(fh)
        lines.append(f'mail to {headers["To"]}: "{headers["Subject"]}" in {shown(path)}')
    return lines


def watch(demo: Demo, seen_mail: set[str]) -> None:
    """Until stopped: tell of new mail, and fail as soon as any part has stopped."""
    while True:
        for child in demo.children:
            code = child.process.poll()
            if code is not None:
                raise DemoFailed(f"the {child.name} stopped (exit code {code})", child.log)
        if not demo.mail_server:
            for line in new_mail(demo, seen_mail):
                say(line)
        time.sleep(0.5)


def run(demo: Demo) -> None:
    demo.logs.mkdir(parents=True, exist_ok=True)
    demo.env = settings(demo)
    env = demo.env
    ours = {demo.port, demo.stripe_port}
    require_free(demo.stripe_port, "Stripe simulator", "STRIPE_PORT", ours)
    require_free(demo.port, "portal", "DEMO_PORT", ours)
    say(f"Starting the demo from {shown(demo.instance)}/ (logs in {shown(demo.logs)}/)")

    simulator = start_simulator(demo)
    flask_command(demo, "migrating the database", ["db", "upgrade"], demo.logs / "migrate.log")
    say(f"  database          {database_shown(env['DATABASE_URL'])} (migrated)")
    seen_mail = {p.name for p in demo.mail_dir.glob("*.eml")} if demo.mail_dir.is_dir() else set()
    # NOTE: the portal and the worker boot while the simulator comes up and the data is seeded.
    mailer = start_mailer(demo)
    portal = start_portal(demo)
    wait_until(simulator, f"{demo.stripe_url}/v1/customers", lambda: simulator_is_ours(demo))
    say(
        f"  Stripe simulator  {demo.stripe_url}, this demo's own, state in memory "
        f"(log: {shown(simulator.log)})"
    )
    wait_until(portal, f"{demo.portal_url}/healthz", lambda: portal_is_healthy(demo))
    say(f"  portal            {demo.portal_url} answers /healthz (log: {shown(portal.log)})")
    # NOTE: registered once the portal answers, so the events that seeding causes reach it.
    target = register_webhook(demo, simulator)
    say(f"  webhooks          the simulator sends Stripe events to {target}")
    seeded = flask_command(
        demo, "seeding the demo data", ["portal", "seed-demo"], demo.logs / "seed.log"
    )
    say("  demo data         " + ("\n" + " " * 20).join(seeded.strip().splitlines()))
    wait_until(
        mailer,
        "its start",
        lambda: "worker started" in mailer.log.read_text(),
    )
    where = demo.mail_server or f"{shown(demo.mail_dir)}/"
    say(
        f"  mail              the worker (`portal worker`) delivers to {where} within a "
        f"second, and runs the scheduled jobs (log: {shown(mailer.log)})"
    )

    links = mint_links(demo, demo_users())
    minutes = env.get("LOGIN_TOKEN_MINUTES", "").strip() or "10"
    say()
    say(f"Sign-in links (each works once, for {minutes} minutes):")
    for email, link in links:
        say(f"  {email:<20} {link}")
    say("A fresh link when one has expired or been used:")
    say(f"  {fresh_link_command(demo)}")
    say(f"  or ask for one at {env['BASE_URL']}/login: the email lands in {where} within seconds.")
    say(
        "Paying: ada's saved card works; a new card is 4242 4242 4242 4242, any future date and "
        "CVC (4000 0000 0000 0341 declines, 4000 0027 6000 3184 asks for 3-D Secure)."
    )
    say()
    say(f"The demo is running at {env['BASE_URL']} (Ctrl-C stops it).")
    watch(demo, seen_mail)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("DEMO_PORT", "5000")))
    parser.add_argument(
        "--stripe-port", type=int, default=int(os.environ.get("STRIPE_PORT", "8420"))
    )
    parser.add_argument(
        "--instance",
        type=Path,
        default=Path(os.environ.get("DEMO_INSTANCE") or ROOT / "instance"),
        help="Folder for the database, mail, logs and the signing key (default: instance/).",
    )
    args = parser.parse_args(argv)
    demo = Demo(port=args.port, stripe_port=args.stripe_port, instance=args.instance.resolve())

    def stop(_signum: int, _frame: Any) -> None:
        raise Stop

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    code = 0
    try:
        run(demo)
    except Stop:
        say("\nStopping the demo ...")
    except DemoFailed as failed:
        print(f"\nmake demo stopped: {failed}", file=sys.stderr, flush=True)
        if failed.log is not None:
            print(f"  its log: {shown(failed.log)}", file=sys.stderr)
            print(tail(failed.log), file=sys.stderr, flush=True)
        code = 1
    finally:
        # NOTE: a second Ctrl-C while stopping must not leave parts running.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_all(demo)
    if code == 0:
        say("The demo has stopped.")
    return code


if __name__ == "__main__":
    sys.exit(main())
