"""Load testing: gunicorn servers, a real sign-in over HTTP, and wrk runs at concurrency 16."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from bench import machine
from bench.seed import RESULTS, ROOT, SECRET_KEY

GUNICORN = ROOT / ".venv" / "bin" / "gunicorn"
FLASK = ROOT / ".venv" / "bin" / "flask"
WRK_SCRIPT = Path(__file__).resolve().parent / "report.lua"
WORKERS = 2
THREADS = 2
CONNECTIONS = 16


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(database_url: str, base_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url,
        SECRET_KEY=SECRET_KEY,
        BASE_URL=base_url,
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    base_url: str
    env: dict[str, str]


def start_server(name: str, app_spec: str, database_url: str, ready_path: str) -> Server:
    """`gunicorn -k sync -w 2 -b 127.0.0.1:<port> <app>`, waited for until it answers.

    The portal and the reference get exactly this command (no access log, no reload, no
    preload), so the only difference between them is the app."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = server_env(database_url, base_url)
    log = RESULTS / f"gunicorn-{name}.log"
    process = subprocess.Popen(
        [
            str(GUNICORN),
            "-k",
            "sync",
            "-w",
            str(WORKERS),
            "-b",
            f"127.0.0.1:{port}",
            "--error-logfile",
            str(log),
            app_spec,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn {name} exited with {process.returncode}; see {log}")
        try:
            if requests.get(base_url + ready_path, timeout=2).status_code < 500:
                return Server(name, process, base_url, env)
        except requests.RequestException:
            pass
        time.sleep(0.2)
    process.terminate()
    raise RuntimeError(f"gunicorn {name} did not answer within 60 s; see {log}")


def server_cpu_seconds(server: Server) -> float:
    """CPU time used so far by the gunicorn master and its workers (not by the database server)."""
    pids = [server.process.pid, *machine.children(server.process.pid)]
    return sum(machine.process_ticks(pid) for pid in pids) / machine.TICKS


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def sign_in(server: Server, email: str) -> str:
    """The real magic-link flow over HTTP; returns the Cookie header value of the session.

    The link comes from `flask --app wsgi portal login-link EMAIL` with BASE_URL pointing at the
    bench server; the confirm page is fetched (for its CSRF token) and its form is posted.
    """
    link = (
        subprocess.run(
            [str(FLASK), "--app", "wsgi", "portal", "login-link", email],
            cwd=ROOT,
            env=server.env,
            check=True,
            capture_output=True,
            text=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    if not link.startswith(server.base_url + "/login/"):
        raise RuntimeError(f"unexpected login link: {link!r}")
    browser = requests.Session()
    confirm = browser.get(link, timeout=10)
    confirm.raise_for_status()
    match = _CSRF.search(confirm.text)
    if match is None:
        raise RuntimeError("the confirm page has no csrf_token field")
    done = browser.post(
        link, data={"csrf_token": match.group(1)}, allow_redirects=False, timeout=10
    )
    if done.status_code != 303:
        raise RuntimeError(f"sign-in answered {done.status_code}, not 303")
    cookie = browser.cookies.get("portal_session")
    if not cookie:
        raise RuntimeError("no portal_session cookie after signing in")
    return f"portal_session={cookie}"


@dataclass(frozen=True)
class Check:
    """One request, redirects not followed: what the page answered."""

    status: int
    content_type: str
    size: int
    rows: str  # the reference's X-Bench-Rows header ("" elsewhere)
    cookie: str | None  # the session cookie as the response renewed it, if it did


# NOTE: portal.auth.sessions.TOUCH_EVERY: a request whose cookie was last renewed a minute ago
# or more writes (the session row's last_seen_at) and renews the cookie. wrk never stores a
# renewed cookie, so a run with an old one measures a write per request no browser makes.
TOUCH_S = 60.0


def cookie_age_s(cookie: str) -> float | None:
    """Seconds since the portal last renewed this session cookie (its last_seen_at), or None."""
    from datetime import UTC, datetime

    from flask import Flask
    from flask.sessions import SecureCookieSessionInterface

    app = Flask("bench-cookie")
    app.secret_key = SECRET_KEY
    serializer = SecureCookieSessionInterface().get_signing_serializer(app)
    try:
        data = serializer.loads(cookie.split("=", 1)[1])
        seen = datetime.fromisoformat(data["last_seen_at"])
    except Exception:  # noqa: BLE001  (any cookie we cannot read: sign in again)
        return None
    return (datetime.now(UTC) - seen).total_seconds()


def fresh_cookie(server: Server, url: str, cookie: str, needed_s: float, email: str) -> str:
    """A session cookie that stays inside the portal's renewal minute for `needed_s` more
    seconds: the same one when it will, else the one the portal renews it to (waiting for the
    minute to pass first), else a new sign-in."""
    age = cookie_age_s(cookie)
    if age is not None and age + needed_s < TOUCH_S - 2:
        return cookie
    if age is not None:
        time.sleep(max(0.0, TOUCH_S - age + 0.5))
        renewed = check_page(url, cookie).cookie
        renewed_age = cookie_age_s(renewed) if renewed else None
        if renewed and renewed_age is not None and renewed_age < 5:
            return renewed
    return sign_in(server, email)


def check_page(url: str, cookie: str | None) -> Check:
    headers = {"Cookie": cookie} if cookie else {}
    response = requests.get(url, headers=headers, allow_redirects=False, timeout=120)
    renewed = response.cookies.get("portal_session")
    return Check(
        status=response.status_code,
        content_type=response.headers.get("Content-Type", ""),
        size=len(response.content),
        rows=response.headers.get("X-Bench-Rows", ""),
        cookie=f"portal_session={renewed}" if renewed else None,
    )


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    not_ok: int
    socket_errors: int
    bytes: int
    server_cpu_s: float = 0.0
    window: machine.Window | None = None

    @property
    def cpu_ms_per_request(self) -> float:
        """Web-tier CPU per request: what the page costs, whatever the neighbours were doing."""
        return self.server_cpu_s * 1000 / self.requests if self.requests else 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def errors(self) -> int:
        return self.not_ok + self.socket_errors


_LINE = re.compile(r"^BENCH (.*)$", re.M)


def wrk(
    url: str,
    cookie: str | None,
    seconds: int,
    server: Server | None = None,
    sampler: machine.Sampler | None = None,
) -> WrkResult:
    """`wrk -t2 -c16 -d<seconds>s --latency` through bench/report.lua (which counts every
    answer that is not a 200), with the server's CPU and the machine's state around it."""
    command = [
        "wrk",
        f"-t{THREADS}",
        f"-c{CONNECTIONS}",
        f"-d{seconds}s",
        "--latency",
        "--timeout",
        "10s",
        "-s",
        str(WRK_SCRIPT),
    ]
    if cookie:
        command += ["-H", f"Cookie: {cookie}"]
    before = sampler.sample() if sampler else None
    cpu_before = server_cpu_seconds(server) if server else 0.0
    output = subprocess.run(
        [*command, url], check=True, capture_output=True, text=True, timeout=seconds + 60
    ).stdout
    cpu_used = server_cpu_seconds(server) - cpu_before if server else 0.0
    window = sampler.window(before, sampler.sample()) if sampler and before else None
    match = _LINE.search(output)
    if match is None:
        raise RuntimeError(f"wrk printed no BENCH line:\n{output}")
    fields = {k: int(v) for k, v in (pair.split("=") for pair in match.group(1).split())}
    return WrkResult(
        requests=fields["requests"],
        seconds=fields["duration_us"] / 1e6,
        p50_ms=fields["p50_us"] / 1000,
        p95_ms=fields["p95_us"] / 1000,
        p99_ms=fields["p99_us"] / 1000,
        max_ms=fields["max_us"] / 1000,
        not_ok=fields["not_ok"],
        socket_errors=sum(fields[k] for k in ("connect", "read", "write", "timeout")),
        bytes=fields["bytes"],
        server_cpu_s=cpu_used,
        window=window,
    )
