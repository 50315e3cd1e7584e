"""What the numbers were measured on."""

from __future__ import annotations

import os
import platform
import resource
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import sqlalchemy as sa


def cpu() -> tuple[str, int]:
    models = [
        line.split(":", 1)[1].strip()
        for line in Path("/proc/cpuinfo").read_text().splitlines()
        if line.startswith("model name")
    ]
    return (models[0] if models else platform.processor() or "unknown"), len(models) or (
        os.cpu_count() or 0
    )


def ram_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024 / 1024
    return 0.0


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def postgres_version(url: str) -> str:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return str(conn.execute(sa.text("SHOW server_version")).scalar())
    except sa.exc.SQLAlchemyError as error:
        return f"unavailable ({error.__class__.__name__})"
    finally:
        engine.dispose()


def wrk_version() -> str:
    result = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    text = (result.stdout or result.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def describe(postgres_url: str | None) -> dict[str, str]:
    model, count = cpu()
    return {
        "CPU": f"{model} × {count}",
        "RAM": f"{ram_gib():.1f} GiB",
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "SQLite": sqlite3.sqlite_version,
        "PostgreSQL": postgres_version(postgres_url) if postgres_url else "not run",
        "SQLAlchemy": metadata.version("sqlalchemy"),
        "Flask": metadata.version("flask"),
        "gunicorn": metadata.version("gunicorn"),
        "WeasyPrint": metadata.version("weasyprint"),
        "wrk": wrk_version(),
    }


def load_averages() -> tuple[float, float, float]:
    """The 1-, 5- and 15-minute load averages."""
    one, five, fifteen = Path("/proc/loadavg").read_text().split()[:3]
    return float(one), float(five), float(fifteen)


def cpu_count() -> int:
    return os.cpu_count() or 1


def _machine_ticks() -> tuple[int, int]:
    """(busy, steal) clock ticks of all CPUs since boot, from the first line of /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return user + nice + system + irq + softirq, steal


TICKS = os.sysconf("SC_CLK_TCK")


def process_ticks(pid: int) -> int:
    """utime + stime of one process, all its threads (fields 14 and 15 of /proc/<pid>/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _processes() -> Iterator[tuple[int, int, bytes]]:
    """(pid, parent pid, command line) of every process."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        yield int(entry.name), int(stat.rsplit(")", 1)[1].split()[1]), cmdline


def children(pid: int) -> list[int]:
    return [child for child, parent, _ in _processes() if parent == pid]


def _postgres_backends(database: str) -> list[int]:
    """PostgreSQL backends serving `database` (their process title names it)."""
    marker = f" {database} ".encode()
    return [pid for pid, _, cmd in _processes() if cmd.startswith(b"postgres: ") and marker in cmd]


@dataclass(frozen=True)
class Sample:
    at: float
    busy: int
    steal: int
    ours: dict[int, int]
    rusage: float
    load: tuple[float, float, float]


@dataclass(frozen=True)
class Window:
    """What the machine did while one measurement ran."""

    seconds: float
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    # Share of the whole machine's CPU (all cores) used by processes that are not this run's
    # (not its gunicorn servers, wrk, the harness or its PostgreSQL backends).
    foreign: float
    steal: float


class Sampler:
    """Samples the machine before and after a measurement, to tell our CPU from everyone else's.

    The load average counts our own gunicorn and wrk too (a run of ours lifts it to 2 or more),
    so it only says whether the machine was quiet *before* we started; the CPU the rest of the
    machine used during the window is what says whether a run was disturbed.
    """

    def __init__(self, roots: list[int], database: str | None = None) -> None:
        self.roots = roots
        self.database = database

    def _ours(self) -> dict[int, int]:
        pids = [pid for root in self.roots for pid in (root, *children(root))]
        if self.database:
            pids += _postgres_backends(self.database)
        return {pid: process_ticks(pid) for pid in pids}

    def sample(self) -> Sample:
        busy, steal = _machine_ticks()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        rusage = usage.ru_utime + usage.ru_stime + kids.ru_utime + kids.ru_stime
        return Sample(time.monotonic(), busy, steal, self._ours(), rusage, load_averages())

    def window(self, before: Sample, after: Sample) -> Window:
        seconds = max(after.at - before.at, 1e-6)
        ours = sum(ticks - before.ours.get(pid, 0) for pid, ticks in after.ours.items())
        ours_s = ours / TICKS + (after.rusage - before.rusage)
        capacity = seconds * cpu_count()
        foreign = ((after.busy - before.busy) / TICKS - ours_s) / capacity
        return Window(
            seconds=seconds,
            load_before=before.load,
            load_after=after.load,
            foreign=max(foreign, 0.0),
            steal=(after.steal - before.steal) / TICKS / capacity,
        )


def wait_for_quiet(max_load: float, timeout_s: float, log: Any = print) -> tuple[bool, float]:
    """Wait until the 1-minute load average is at most `max_load`; (quiet, seconds waited)."""
    started = time.monotonic()
    while True:
        one = load_averages()[0]
        waited = time.monotonic() - started
        if one <= max_load:
            return True, waited
        if waited >= timeout_s:
            log(f"  load average {one:.2f} still above {max_load} after {waited:.0f} s")
            return False, waited
        time.sleep(5)
