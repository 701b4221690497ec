"""Tests leave nothing behind: every test is checked for leaked file descriptors and threads."""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Iterator

import pytest


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
        gc.collect()
        fds = {k: v for k, v in _fds().items() if fds_before.get(k) != v}
        threads = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
        if (not fds and not threads) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not fds, f"file descriptors leaked by this test: {fds}"
    assert not threads, f"threads left running by this test: {[t.name for t in threads]}"
