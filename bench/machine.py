"""What the numbers were measured on."""

from __future__ import annotations

import os
import platform
import sqlite3
import subprocess
from importlib import metadata
from pathlib import Path

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
