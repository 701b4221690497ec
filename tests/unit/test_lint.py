"""ruff and mypy run with the suite, so a local run is red when either finds something (.ci/run runs both first,
failing fast, and deselects these two).

mypy must see the packages as ``zcrepl.*``: scripts/mypy.sh runs it in a directory whose ``zcrepl/`` links to the
four source folders, since an editable install hides them behind an import hook mypy cannot follow.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_ruff_is_clean() -> None:
    p = subprocess.run([str(BIN / "ruff"), "check", "--no-cache", "."], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr


def test_mypy_is_clean() -> None:
    p = subprocess.run(["bash", str(REPO / "scripts" / "mypy.sh")], env={**os.environ, "MYPY": str(BIN / "mypy")},
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "no issues found in" in p.stdout and int(p.stdout.split(" in ")[1].split()[0]) > 50, p.stdout


def test_generated_modules_are_exempt_from_mypy() -> None:
    import tomllib

    doc = tomllib.loads((REPO / "pyproject.toml").read_text())
    exempt = {m for o in doc["tool"]["mypy"]["overrides"] if o.get("ignore_errors") for m in o["module"]}
    generated = {f"zcrepl.proto.{p.stem}" for p in (REPO / "proto").glob("*_pb2*.py")}
    assert generated == exempt, "list the generated modules in pyproject.toml's [[tool.mypy.overrides]]"
