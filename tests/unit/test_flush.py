"""JobFlush on real files: every fd handed in is fsynced and closed, a failed fsync fails the wait, an
abandoned attempt closes what it held without waiting for it to be durable, and a big file still arriving is
flushed in steps behind its write position."""

from __future__ import annotations

import os
import resource
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from zcrepl.agent.transfer import flush as fl
from zcrepl.agent.transfer import opsframe as opf
from zcrepl.agent.transfer import receive as rc
from zcrepl.agent.transfer.apply import TreeWriter
from zcrepl.agent.transfer.changes import apply_ops
from zcrepl.agent.transfer.channel import Channel, ZeroCopy
from zcrepl.agent.transfer.fileslot import FileSlot
from zcrepl.agent.transfer.flush import JobFlush
from zcrepl.agent.transfer.frame import Entry, FileHead, Kind
from zcrepl.agent.transfer.saferoot import SafeRoot
from zcrepl.core.errors import TransferError
from zcrepl.core.types import JobOptions


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _files(tmp_path: Path, n: int) -> Iterator[int]:
    """Opened one at a time, as a receiver completes them."""
    for i in range(n):
        fd = os.open(tmp_path / f"f{i}", os.O_RDWR | os.O_CREAT, 0o644)
        os.write(fd, b"x" * 4096)
        yield fd


@pytest.fixture
def root(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


@pytest.mark.parametrize("journaled", [True, False], ids=["one-commit", "fsync-each"])
def test_every_fd_is_flushed_and_closed_with_a_bounded_number_open(tmp_path: Path, root: int, journaled: bool,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fl, "in_flight", lambda: fl.WORKERS)  # the bound under a 1,024-fd limit: fewer files
    # The one-commit path is forced on whatever the temp dir is (its syscalls work anywhere; whether they make
    # the files durable there is journaled()'s question, tested below).
    before = _open_fds()
    f = JobFlush(root)
    f.journaled = journaled
    most = 0
    for fd in _files(tmp_path, (f.in_flight + 1) * fl.BATCH + 3):  # more than the bound, and a remainder
        f.file_done(fd)
        most = max(most, _open_fds() - before)
    f.dir_changed(os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY))
    os.utime(tmp_path, ns=(1, 1_600_000_000_123_456_789))
    mtime = os.stat(tmp_path).st_mtime_ns
    f.wait("test")
    assert os.stat(tmp_path).st_mtime_ns == mtime  # the final commit touched the root's times, not changed them
    assert _open_fds() == before
    assert most <= fl.BATCH * (f.in_flight + 1) + 1
    assert (f.files, f.dirs) == ((fl.WORKERS + 1) * fl.BATCH + 3, 1)
    with pytest.raises(RuntimeError):
        f.file_done(os.open(tmp_path / "late", os.O_RDWR | os.O_CREAT, 0o644))
    assert _open_fds() == before


@pytest.mark.parametrize("where", ["pool", "remainder"])
def test_a_failed_fsync_fails_the_wait_and_nothing_leaks(tmp_path: Path, root: int, where: str) -> None:
    before = _open_fds()
    f = JobFlush(root)
    files = list(_files(tmp_path, fl.BATCH + 2))
    r, w = os.pipe()  # fsync of a pipe is EINVAL: a real error from the kernel, as EIO would be
    os.close(w)
    for i, fd in enumerate(files):
        if i == (3 if where == "pool" else fl.BATCH + 1):
            f.dir_changed(r)
        f.file_done(fd)
    with pytest.raises(TransferError, match="test: what this job wrote could not be made durable"):
        f.wait("test")
    assert _open_fds() == before


def test_close_lets_go_of_everything_without_waiting_for_it(tmp_path: Path, root: int) -> None:
    before = _open_fds()
    f = JobFlush(root)
    for fd in _files(tmp_path, fl.BATCH + 5):
        f.file_done(fd)
    f.close()
    f.close()  # idempotent: a failed finish() is followed by abandon()
    assert _open_fds() == before


def test_a_writer_whose_flush_fails_reports_a_clear_error_and_not_done(tmp_path: Path) -> None:
    root = SafeRoot(os.fsencode(tmp_path))
    try:
        w = TreeWriter(root, JobOptions(), "hostB:/backup", 7)
        assert w.flush is not None
        w.admit(Entry(Kind.DIR, b"", 0o755, 1_600_000_000_000_000_000))
        w.end_manifest(1)
        r, wr = os.pipe()  # fsync of a pipe fails (EINVAL) as a failing disk's would (EIO)
        os.close(wr)
        w.flush.dir_changed(r)
        with pytest.raises(TransferError, match=r"hostB:/backup: what this job wrote could not be made durable .*"
                                                r"check that disk"):
            w.finish()
        w.abandon()
    finally:
        root.close()


def test_a_watch_sessions_renames_and_deletes_flush_the_directories_they_changed(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_bytes(b"x")
    (tmp_path / "gone").write_bytes(b"y")
    before = _open_fds()
    root = SafeRoot(os.fsencode(tmp_path))
    try:
        w = TreeWriter(root, JobOptions(), "hostB:/backup", 7)
        assert w.flush is not None
        apply_ops(w, [opf.Op(opf.OP_RENAME, b"a/f", b"new/dir/f"), opf.Op(opf.OP_DELETE, b"gone", b"")])
        assert _open_fds() == before + 1  # the root's fd only: nothing is held until the flush
        w.flush.wait("hostB:/backup", root)
        # a (rename source), new/dir (its target), new (made for it), the root (new made, gone deleted)
        assert w.flush.dirs == 4
    finally:
        root.close()
    assert _open_fds() == before
    assert (tmp_path / "new" / "dir" / "f").read_bytes() == b"x" and not (tmp_path / "gone").exists()


@pytest.mark.parametrize(("options", "want"), [
    ("rw\nbarrier\ndata=ordered\ncommit=5\n", True),
    ("rw\ndata=journal\n", True),
    ("rw\nbarrier\nnojournal_checksum\ncommit=5\n", False),  # mkfs.ext4 -O ^has_journal: no data= mode
    (None, False),  # not found under /proc/fs/ext4: not known to have a journal, so each file is fsynced
])
def test_an_ext4_counts_as_journaled_only_when_its_mount_has_a_data_mode(tmp_path: Path, options: str | None,
                                                                         want: bool) -> None:
    dev = os.makedev(7, 3)
    (tmp_path / "sys" / "dev" / "block").mkdir(parents=True)
    os.symlink("../../devices/virtual/block/loop3", tmp_path / "sys" / "dev" / "block" / "7:3")
    if options is not None:
        (tmp_path / "proc" / "fs" / "ext4" / "loop3").mkdir(parents=True)
        (tmp_path / "proc" / "fs" / "ext4" / "loop3" / "options").write_text(options)
    assert fl.ext4_has_journal(dev, proc=str(tmp_path / "proc"), sys=str(tmp_path / "sys")) is want


@pytest.mark.parametrize(("soft", "want"), [(256, fl.WORKERS), (1024, fl.WORKERS), (4096, 8),
                                            (20_000, fl.MAX_IN_FLIGHT), (resource.RLIM_INFINITY, fl.MAX_IN_FLIGHT)])
def test_the_fds_in_flight_grow_with_the_fd_limit_up_to_an_eighth_of_it(monkeypatch: pytest.MonkeyPatch, soft: int,
                                                                       want: int) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _which: (soft, resource.RLIM_INFINITY))
    assert fl.in_flight() == want


@pytest.mark.parametrize("splice", [True, False], ids=["splice", "recv+pwrite"])
def test_a_big_range_is_flushed_in_steps_as_it_arrives(tmp_path: Path, root: int, splice: bool,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rc, "WRITEBACK_STEP", 256 << 10)  # the steps made small: a 3 MiB range takes several
    monkeypatch.setattr(rc, "FLUSH_STEP", 1 << 20)
    data = os.urandom((3 << 20) + 12345)
    before = _open_fds()
    a, b = socket.socketpair()
    sender = threading.Thread(target=a.sendall, args=(data,))
    sender.start()
    f = JobFlush(root)
    fd = os.open(tmp_path / "big", os.O_RDWR | os.O_CREAT, 0o600)
    sink = rc._Sink(Channel(b), ZeroCopy(splice=splice), f)
    try:
        sink.write(cast(FileSlot, SimpleNamespace(fd=fd)), FileHead(0, 0, len(data), len(data), 0, 0o644))
    finally:
        sink.close()
        sender.join()
        a.close()
        b.close()
    assert f.early_flushes >= 1  # one at least: a step's flush is skipped while the one before runs
    f.file_done(fd, len(data))
    f.wait("test")
    assert _open_fds() == before  # the duplicates the early flushes worked on are closed too
    assert (tmp_path / "big").read_bytes() == data


def test_a_failed_early_flush_fails_the_wait(tmp_path: Path, root: int) -> None:
    before = _open_fds()
    f = JobFlush(root)
    r, w = os.pipe()  # fdatasync of a pipe is EINVAL, as a failing disk's writeback error would be EIO
    f.flush_early(r)
    os.close(w)
    os.close(r)  # the caller's fd may go (the file committed or discarded) while its flush runs
    with pytest.raises(TransferError, match="test: what this job wrote could not be made durable"):
        f.wait("test")
    assert _open_fds() == before
