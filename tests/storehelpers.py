"""The store tests' fixtures and records (tests/unit/test_store_*.py): a store on each backend
(fixture ``store_spec``), a way to open it again, and a job to save."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from zcrepl.controller.store import Store, open_store
from zcrepl.core.types import AgentInfo, Endpoint, Job, JobOptions, TransferStats

SRC = Endpoint("hostA", b"/srv/data")
DST = Endpoint("hostB", b"/backup/\xff\nodd")
OPTS = JobOptions(delete=True, checksum=True, bwlimit=1000, max_attempts=3)
STATS = TransferStats(entries=5, files_total=3, files_done=2, bytes_total=300, bytes_done=200, files_skipped=1,
                      deleted=1, wire_bytes=250, skipped_special=1, errors=0, scan_done=True)


def _db_fds(path: str) -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(path):
            out.append(target)
    return out


@pytest.fixture(autouse=True)
def _no_fd_leak() -> Iterator[None]:
    before = len(os.listdir("/proc/self/fd"))
    yield
    assert len(os.listdir("/proc/self/fd")) == before, "file descriptors leaked (an unclosed sqlite connection?)"


@pytest.fixture
def state_dir(tmp_path: Path) -> str:
    return str(tmp_path / "state")


@pytest.fixture
def store(store_spec: str, state_dir: str) -> Iterator[Store]:
    s = open_store(store_spec, state_dir)
    yield s
    s.close()


@pytest.fixture
def reopen(store_spec: str, state_dir: str) -> Iterator[Any]:
    """Opens the test's store again (the same file or database), closing each one at the end."""
    opened: list[Store] = []

    def make() -> Store:
        opened.append(open_store(store_spec, state_dir))
        return opened[-1]
    yield make
    for s in opened:
        s.close()


def sql(store: Store, query: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """A statement run on the store's own thread, after everything queued (the backends' rows as tuples)."""
    return store.run(lambda: [tuple(r) for r in store.db.execute(query, args).fetchall()])


def schema(store: Store) -> list[tuple[object, ...]]:
    return sql(store, "SELECT value FROM meta WHERE key='schema'")


def create(store: Store, now: float = 10.0, src: Endpoint = SRC, dst: Endpoint = DST) -> Job:
    return store.create_job(src, dst, OPTS, 3, now)


INFO = AgentInfo(name="hostA", grpc_address="10.0.0.1:7421", data_address="10.0.0.1:7422",
                 exports=(b"/srv/data", b"/srv/\xff\xfe odd", "/caf\u00e9".encode()), version="0.1.0", pid=4242,
                 hostname="hostA.example")
