"""Tests leave nothing behind: every test is checked for leaked file descriptors and threads."""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Iterator

import pytest
from pgserver import PgServer, pg_bindir


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``slow`` tests (fuzz campaigns, soaks) run only when asked for: ``-m slow`` or ``ZC_SLOW=1``."""
    if os.environ.get("ZC_SLOW") == "1" or "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow or ZC_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def _fds() -> dict[int, str]:
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        # gRPC keeps process-wide epoll/eventfd objects alive after first use; those are not leaks.
        if not target.startswith("anon_inode:"):
            out[int(name)] = target
    return out


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    fds_before = _fds()
    threads_before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 3.0
    while True:
        fds = {k: v for k, v in _fds().items() if fds_before.get(k) != v}
        threads = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
        if (not fds and not threads) or time.monotonic() > deadline:
            break
        # Only now a full collection (it costs ~0.1 s a test on this heap): what a cycle still holds is freed.
        gc.collect()
        time.sleep(0.05)
    assert not fds, f"file descriptors leaked by this test: {fds}"
    assert not threads, f"threads left running by this test: {[t.name for t in threads]}"


# -- PostgreSQL: one server per test session, an empty database per test ------------------------------------
# The store's tests run on both backends (fixture ``store_spec``). The server is Debian's postgresql package
# (initdb + pg_ctl on a temp dir, its Unix socket in that dir, as the OS user ``postgres`` when the suite runs
# as root): .ci/run installs it. Missing binaries fail the tests; only a human may skip them, with ZC_NO_PG=1.
# Each test gets the session's database with its schema dropped and made anew: everything the store creates
# lives in that schema, so this is a fresh database to the code under test, for 15 ms where CREATE DATABASE
# from a template and DROP DATABASE cost 150-300 ms a test here (the server: tests/pgserver.py).


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    if not pg_bindir():
        if os.environ.get("ZC_NO_PG") == "1" and not os.environ.get("CI"):
            pytest.skip("PostgreSQL tests skipped: ZC_NO_PG=1")
        pytest.fail("PostgreSQL binaries (initdb, pg_ctl) not found: install Debian's postgresql package "
                    "(apt-get install postgresql; .ci/run does), or set ZC_NO_PG=1 to skip these tests by hand",
                    pytrace=False)
    server = PgServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """An empty database on the session's server."""
    return pg_server.url(pg_server.empty_database())


@pytest.fixture(params=["sqlite", "postgres"])
def store_spec(request: pytest.FixtureRequest) -> str:
    """What ``--store`` gets: "" (the state dir's SQLite file) or a fresh PostgreSQL database's URL."""
    if request.param == "sqlite":
        return ""
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def own_pg_server(pg_server: PgServer) -> Iterator[PgServer]:
    """A PostgreSQL server of the test's own (initdb costs ~1-2 s), for tests that stop and start it: stopping
    the session's would break the tests running beside. Asks for ``pg_server`` only for its checks."""
    server = PgServer()
    try:
        yield server
    finally:
        server.stop()
