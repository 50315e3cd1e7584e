"""Instructions per request, counted by valgrind (`python -m bench.instructions [URL] [K] [KEYS]`;
KEYS: page keys separated by commas, e.g. `dashboard,account`; the reference always runs).

The one measure here that the neighbours cannot move: on a busy machine wall time and even CPU
time per request drift with the load (caches, frequency, preemption), while the number of
instructions a request executes does not. Each page runs in its own process under
`valgrind --tool=cachegrind --cache-sim=no`; every process does the same start-up (the portal
app and the reference app built, a sign-in, every page requested three times), then K
requests of one page; a process that does none of them is the baseline subtracted from the
others. In-process (test client), so no gunicorn, HTTP or wrk; on PostgreSQL the database
server's own work is not counted (it runs in another process). Instructions are not time (a
cache miss costs more than an add), so read the result as a ratio to the reference's count.
Slow (about a minute per page): run by hand, not by `make bench`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from typing import Any

from bench import inprocess, seed

_IREFS = re.compile(r"I\s+refs:\s+([\d,]+)")


def worker(url: str, key: str, count: int) -> None:
    from bench.bare import create_bare_app

    app = inprocess.make_app(url)
    bare = create_bare_app(url).test_client()
    pages = inprocess.available_pages(app)
    number = inprocess.newest_number(app, seed.BIG_EMAIL)
    client = inprocess.signed_in_client(app, seed.BIG_EMAIL)
    paths = inprocess.page_paths(pages, number)
    for _ in range(3):
        bare.get("/rows")
        for path in paths.values():
            client.get(path)
    if key == "none":
        return
    if key == "reference":
        for _ in range(count):
            assert bare.get("/rows").status_code == 200
        return
    for _ in range(count):
        assert client.get(paths[key]).status_code == 200


def count(url: str, key: str, requests: int) -> int:
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("bench.instructions needs valgrind (apt-get install valgrind)")
    result = subprocess.run(
        [
            valgrind,
            "--tool=cachegrind",
            "--cache-sim=no",
            "--cachegrind-out-file=/dev/null",
            sys.executable,
            "-m",
            "bench.instructions",
            "--worker",
            url,
            key,
            str(requests),
        ],
        cwd=seed.ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    match = _IREFS.search(result.stderr)
    if match is None:
        raise RuntimeError(f"no instruction count from valgrind:\n{result.stderr[-2000:]}")
    return int(match.group(1).replace(",", ""))


def warm_bytecode(url: str) -> None:
    """One start-up outside valgrind, so that every counted process finds the same compiled
    bytecode. NOTE: the first process after a checkout or an edit compiles and writes the
    .pyc files of every module it imports (several thousand million instructions); when that
    was the baseline, every page came out below it (negative counts per request)."""
    subprocess.run(
        [sys.executable, "-m", "bench.instructions", "--worker", url, "none", "0"],
        cwd=seed.ROOT,
        capture_output=True,
        check=True,
    )


def measure(
    url: str, requests: int = 40, log: Any = print, keys: list[str] | None = None
) -> dict[str, float]:
    """Millions of instructions per request, per page key (and "reference"); `keys` limits
    the pages counted (the reference is always counted)."""
    warm_bytecode(url)
    baseline = count(url, "none", requests)
    log(f"  baseline {baseline / 1e6:,.0f} M instructions")
    result = {}
    wanted = [k for k, *_ in inprocess.PAGES if keys is None or k in keys]
    for key in ["reference", *wanted]:
        total = count(url, key, requests)
        result[key] = (total - baseline) / requests / 1e6
        log(f"  {key}: {result[key]:.2f} M instructions per request")
    return result


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return 0
    url = sys.argv[1] if len(sys.argv) > 1 else f"sqlite:///{seed.RESULTS / 'run.sqlite3'}"
    requests = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    keys = sys.argv[3].split(",") if len(sys.argv) > 3 else None
    result = measure(url, requests, keys=keys)
    reference = result["reference"]
    print("| Page | M instructions per request | × reference (reference / page) |")
    print("|---|---:|---:|")
    labels = {key: label for key, label, *_ in inprocess.PAGES}
    for key, value in result.items():
        label = labels.get(key, "Reference: 50 invoices (ORM + Jinja)")
        print(f"| {label} | {value:.2f} | {reference / value:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
