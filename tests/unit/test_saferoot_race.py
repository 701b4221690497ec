"""Tests for zcrepl.agent.transfer.saferoot: a symlink swapped in while a SafeRoot works never makes it write
outside the root (reliability §2)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import saferoothelpers
from saferoothelpers import MTIME_NS, _names, _write_all

from zcrepl.agent.transfer.atomic import AtomicFile
from zcrepl.agent.transfer.saferoot import SafeRoot
from zcrepl.core.errors import UnsafePath

# The shared fixtures: pytest finds a fixture by the name of the module attribute holding it.
_no_fd_leak = saferoothelpers._no_fd_leak
resolver = saferoothelpers.resolver
tree = saferoothelpers.tree
root = saferoothelpers.root


# -------------------------------------------------------------------------------------------- race


def _exchanger() -> Callable[..., int] | None:
    """glibc's renameat2, for an atomic RENAME_EXCHANGE swap (the strongest attacker), if present."""
    return getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)


def test_symlink_swap_race_never_writes_outside(root: SafeRoot, tree: Path, resolver: bool) -> None:
    base = tree / "root"
    (base / "x").mkdir()
    (base / "y").symlink_to("../outside")
    renameat2 = _exchanger()
    a, x, y = (os.fsencode(base / n) for n in ("a", "x", "y"))
    os.rmdir(base / "a" / "b")
    os.unlink(base / "a" / "f")
    os.rmdir(base / "a")
    os.rename(x, a)  # a: real dir, y: symlink to ../outside
    if renameat2 is not None and renameat2(-100, a, -100, y, 2) != 0:  # RENAME_EXCHANGE
        renameat2 = None
    stop = threading.Event()
    flips = 0

    def flipper() -> None:
        nonlocal flips
        while not stop.is_set():
            if renameat2 is not None:
                renameat2(-100, a, -100, y, 2)
            else:  # no atomic exchange: a moment with no "a" at all, which create=True may fill
                with contextlib.suppress(OSError):
                    os.rename(a, x)
                    os.rename(y, a)
                    os.rename(a, y)
                    os.rename(x, a)
            flips += 1

    written = refused = 0
    worker = threading.Thread(target=flipper)
    worker.start()
    try:
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            try:
                pfd, leaf = root.open_parent((b"a", b"f"), create=True)
                try:
                    with AtomicFile(pfd, leaf) as af:
                        _write_all(af.fd, b"payload")
                        af.commit(0o644, MTIME_NS)
                finally:
                    os.close(pfd)
                written += 1
            except (UnsafePath, OSError):
                refused += 1
    finally:
        stop.set()
        worker.join()
    assert _names(tree / "outside") == [b"secret"]
    assert (tree / "outside" / "secret").read_bytes() == b"secret"
    assert flips > 10 and written > 0 and refused > 0, (flips, written, refused)
