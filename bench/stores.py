"""``--store`` for the benchmarks: "" (SQLite in the run's temp dir), a SQLite file, a ``postgresql://`` URL, or
``postgres``: a throwaway PostgreSQL server started for the run the way the test session starts one
(tests/pgserver.py: Debian's postgresql package, initdb + pg_ctl on a temp dir, a Unix socket, fsync off), and
stopped after it."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

THROWAWAY = "postgres"


@contextmanager
def store_spec(spec: str) -> Iterator[Callable[[], str]]:
    """A function giving what zc-controller's ``--store`` gets for ``spec``, for one run: on a throwaway server an
    empty database each time (runs must not inherit each other's jobs); the server lives as long as the block."""
    if spec != THROWAWAY:
        yield lambda: spec
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from pgserver import PgServer, pg_bindir

    if not pg_bindir():
        raise RuntimeError("--store postgres needs Debian's postgresql package (initdb, pg_ctl): apt-get install "
                           "postgresql, or pass a postgresql:// URL of a server you run")
    server = PgServer()
    try:
        yield lambda: server.url(server.empty_database())
    finally:
        server.stop()


def label(spec: str) -> str:
    """The store as a table shows it (no URL: it names a temp dir and maybe a password)."""
    return "PostgreSQL" if spec.startswith(("postgresql://", "postgres://")) or spec == THROWAWAY else "SQLite"
