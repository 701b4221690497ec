"""Tests for zcrepl.agent.inotify_usage: watches counted per user from /proc, the limit, the cache."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from zcrepl.agent.inotify_usage import InotifyUsage, max_user_watches, watches_of_user

_libc = ctypes.CDLL(None, use_errno=True)
IN_CREATE = 0x100


@pytest.fixture
def inotify_fd(tmp_path: Path) -> Iterator[tuple[int, list[Path]]]:
    """A real inotify instance of this process watching three directories."""
    fd = _libc.inotify_init1(os.O_CLOEXEC)
    if fd < 0:
        pytest.skip(f"no inotify here: errno {ctypes.get_errno()}")
    dirs = [tmp_path / f"d{i}" for i in range(3)]
    try:
        for d in dirs:
            d.mkdir()
            assert _libc.inotify_add_watch(fd, os.fsencode(d), IN_CREATE) >= 0, ctypes.get_errno()
        yield fd, dirs
    finally:
        os.close(fd)


def test_real_watches_of_this_process_are_counted(inotify_fd: tuple[int, list[Path]], tmp_path: Path) -> None:
    fd, _ = inotify_fd
    mine = watches_of_user(os.geteuid(), proc="/proc")
    assert mine >= 3
    extra = tmp_path / "d3"
    extra.mkdir()
    assert _libc.inotify_add_watch(fd, os.fsencode(extra), IN_CREATE) >= 0
    # Other processes of this user may add or drop watches meanwhile; ours alone moved it by one.
    own = sum(1 for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines() if line.startswith("inotify wd:"))
    assert own == 4
    assert watches_of_user(os.geteuid()) >= own


def fake_proc(root: Path, procs: dict[str, list[int]]) -> Path:
    """A /proc look-alike: PID dirs with fd links and fdinfo files; watches per fd (-1 = not inotify)."""
    for pid, fds in procs.items():
        (root / pid / "fd").mkdir(parents=True)
        (root / pid / "fdinfo").mkdir()
        for i, n in enumerate(fds):
            (root / pid / "fd" / str(i)).symlink_to("anon_inode:inotify" if n >= 0 else "/dev/null")
            lines = ["pos:\t0", "flags:\t02000000"] + [f"inotify wd:{w + 1} ino:1 sdev:800001 mask:100"
                                                     for w in range(max(n, 0))]
            (root / pid / "fdinfo" / str(i)).write_text("\n".join(lines) + "\n")
    (root / "self").mkdir(exist_ok=True)  # not a pid: ignored
    return root


def test_fake_proc_counts_every_inotify_fd_of_the_uid(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path / "proc", {"1": [2, -1, 5], "22": [0, 1], "333": [-1]})
    assert watches_of_user(os.geteuid(), proc=str(proc)) == 8
    assert watches_of_user(os.geteuid() + 1, proc=str(proc)) == 0  # the tree is ours, not that uid's
    assert watches_of_user(os.geteuid(), proc=str(tmp_path / "nothing")) == 0


def test_limit_and_cache(tmp_path: Path) -> None:
    limit = tmp_path / "max_user_watches"
    limit.write_text("8192\n")
    assert max_user_watches(str(limit)) == 8192
    assert max_user_watches(str(tmp_path / "missing")) == 0
    real = max_user_watches()
    assert real > 0 or not os.path.exists("/proc/sys/fs/inotify")

    proc = fake_proc(tmp_path / "proc", {"1": [2]})
    now = [0.0]
    usage = InotifyUsage(every=30.0, proc=str(proc), limit_path=str(limit), monotonic=lambda: now[0])
    assert usage.read() == (2, 8192)
    fake_proc(tmp_path / "proc", {"2": [5]})
    now[0] = 29.0
    assert usage.read() == (2, 8192)  # cached
    now[0] = 30.0
    assert usage.read() == (7, 8192)
