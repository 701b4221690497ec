"""ruff and mypy run with the suite, so CI is red when either finds something.

mypy must see the packages as ``zcrepl.*``; a plain editable install hides them behind an import hook it cannot
follow, so the check runs in a directory whose ``zcrepl/`` links to the four source folders.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_ruff_is_clean() -> None:
    p = subprocess.run([str(BIN / "ruff"), "check", "--no-cache", "."], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr


def test_mypy_is_clean(tmp_path: Path) -> None:
    pkg = tmp_path / "zcrepl"
    pkg.mkdir()
    for folder in ("core", "proto", "agent", "controller"):
        (pkg / folder).symlink_to(REPO / folder)
    p = subprocess.run([str(BIN / "mypy"), "--config-file", str(REPO / "pyproject.toml"), "--cache-dir",
                        str(tmp_path / "cache"), "-p", "zcrepl.core", "-p", "zcrepl.proto", "-p", "zcrepl.agent",
                        "-p", "zcrepl.controller"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "no issues found in" in p.stdout and int(p.stdout.split(" in ")[1].split()[0]) > 50, p.stdout


def test_generated_modules_are_exempt_from_mypy() -> None:
    import tomllib

    doc = tomllib.loads((REPO / "pyproject.toml").read_text())
    exempt = {m for o in doc["tool"]["mypy"]["overrides"] if o.get("ignore_errors") for m in o["module"]}
    generated = {f"zcrepl.proto.{p.stem}" for p in (REPO / "proto").glob("*_pb2*.py")}
    assert generated == exempt, "list the generated modules in pyproject.toml's [[tool.mypy.overrides]]"
