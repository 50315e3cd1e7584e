"""The layers stay one way: the import-linter contracts of pyproject.toml, run in the suite (CI
runs `make test`), so a billing module that imports Flask or a service that imports a route
fails the build, not only `make lint`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_are_kept() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from importlinter.cli import lint_imports_command; "
            "sys.exit(lint_imports_command())",
            "--no-cache",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert " 0 broken." in result.stdout, result.stdout + result.stderr
    assert result.returncode == 0, result.stdout + result.stderr
