"""The SafeRoot tests' fixtures (tests/unit/test_saferoot_*.py): a tree with escapes planted in it, a SafeRoot
over it with openat2 or with the per-component walk, and a check that no test leaks a file descriptor."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from zcrepl.agent.transfer import saferoot
from zcrepl.agent.transfer.saferoot import SafeRoot

MTIME_NS = 1_600_000_000_123_456_789
ODD_NAMES = [b"new\nline", b"\xff\xfe", b"sp ace\x1b[31m", "café".encode(), b"tab\there\r"]


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def _no_fd_leak() -> Iterator[None]:
    before = _fd_count()
    yield
    assert _fd_count() == before, "file descriptors leaked"


@pytest.fixture(params=[True, False], ids=["openat2", "walk"])
def resolver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Run a test with openat2, then with the per-component walk (openat2 must not even be called); the
    ``root`` fixture passes the choice to its SafeRoot."""
    use = bool(request.param)
    if not use:

        def forbidden(*args: object, **kwargs: object) -> int:
            raise AssertionError("openat2 called by a SafeRoot made with use_openat2=False")

        monkeypatch.setattr(saferoot, "openat2", forbidden)
    return use


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """tmp/root: a/b/, a/f, escape -> ../outside, abs -> /etc, inlink -> a, dang (dangling); tmp/outside."""
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "f").write_bytes(b"data")
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    (root / "escape").symlink_to("../outside")
    (root / "abs").symlink_to("/etc")
    (root / "inlink").symlink_to("a")
    (root / "dang").symlink_to("../outside/newdir")
    return tmp_path


@pytest.fixture
def root(tree: Path, request: pytest.FixtureRequest) -> Iterator[SafeRoot]:
    use_openat2 = request.getfixturevalue("resolver") if "resolver" in request.fixturenames else True
    with SafeRoot(os.fsencode(tree / "root"), use_openat2=use_openat2) as r:
        yield r


def _names(path: Path) -> list[bytes]:
    return sorted(os.listdir(os.fsencode(path)))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _chain(dir_fd: int, depth: int, name: bytes = b"d", files: int = 0) -> None:
    """``depth`` nested directories ``name`` below ``dir_fd``, each holding ``files`` files too."""
    fd = os.dup(dir_fd)
    try:
        for _ in range(depth):
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
            for i in range(files):
                os.close(os.open(b"f%d" % i, os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
    finally:
        os.close(fd)
