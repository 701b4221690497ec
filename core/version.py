"""The package's version, read from its installed metadata (pyproject.toml is the one place it is written)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("zcrepl")
except PackageNotFoundError:  # run from a checkout that was never installed: say so rather than guess
    VERSION = "0+unknown"
