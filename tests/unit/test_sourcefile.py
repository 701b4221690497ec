"""The two questions the sender and the same-host copy ask of a source file, answered once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from zcrepl.agent.transfer.frame import Entry, Kind
from zcrepl.agent.transfer.saferoot import TEMP_PREFIX, SafeRoot
from zcrepl.agent.transfer.sourcefile import SourceFiles, as_scanned, data_segments
from zcrepl.core.errors import UnsafePath

MIB = 1 << 20


def _sparse(path: Path, size: int, data: list[int]) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    os.ftruncate(fd, size)
    for off in data:
        os.pwrite(fd, b"x" * MIB, off)
    return fd


@pytest.mark.parametrize(("size", "data"), [
    (8 * MIB, [0, 4 * MIB]),  # data first, a hole between, a hole at the end
    (8 * MIB, [2 * MIB, 7 * MIB]),  # a hole first, data up to the end
    (8 * MIB, []),  # holes only
])
def test_data_segments_cover_the_data_and_only_it(tmp_path: Path, size: int, data: list[int]) -> None:
    fd = _sparse(tmp_path / "f", size, data)
    try:
        probe = os.lseek(fd, 0, os.SEEK_DATA) if data else 0
        if data and probe != data[0]:
            pytest.skip("this filesystem does not report holes")
        segments = list(data_segments(fd, size))
    finally:
        os.close(fd)
    covered = {off // MIB for off, n in segments for off in range(off, off + n, MIB)}
    assert covered == {off // MIB for off in data}
    assert all(n > 0 and off + n <= size for off, n in segments)
    assert segments == sorted(segments)


def test_data_segments_stop_at_the_announced_size(tmp_path: Path) -> None:
    fd = _sparse(tmp_path / "f", 8 * MIB, [0, 6 * MIB])  # the file grew past what the scan saw
    try:
        segments = list(data_segments(fd, 2 * MIB))
    finally:
        os.close(fd)
    assert segments and segments[-1][0] + segments[-1][1] <= 2 * MIB


def test_as_scanned(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    st = os.stat(tmp_path / "f")
    e = Entry(Kind.FILE, b"f", 0o644, st.st_mtime_ns, 3)
    assert as_scanned(st, e)
    assert not as_scanned(st, Entry(Kind.FILE, b"f", 0o644, st.st_mtime_ns, 4))
    assert not as_scanned(st, Entry(Kind.FILE, b"f", 0o644, st.st_mtime_ns + 1, 3))


def test_source_files_open_regular_files_below_the_root_and_nothing_else(tmp_path: Path) -> None:
    """SourceFiles refuses what SafeRoot.open_read refuses (bad names, symlinks anywhere, non-regular files),
    reuses the parent's fd for the files of one directory, and holds no fd once released."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a").write_bytes(b"a")
    (tmp_path / "d" / "b").write_bytes(b"bb")
    (tmp_path / "link").symlink_to(tmp_path / "d")
    (tmp_path / "d" / "ln").symlink_to(tmp_path / "d" / "a")
    os.mkfifo(tmp_path / "d" / "fifo")
    before = len(os.listdir("/proc/self/fd"))
    with SafeRoot(os.fsencode(tmp_path)) as root:
        files = SourceFiles(root)
        for path, size in ((b"d/a", 1), (b"d/b", 2)):
            fd, st = files.open(path)
            os.close(fd)
            assert st.st_size == size
        temp = b"d/" + TEMP_PREFIX + b"x"
        for bad in (b"", b"d", b"d/", b"d/../d/a", b"/d/a", b"d//a", b"link/a", b"d/ln", b"d/fifo", temp):
            with pytest.raises(UnsafePath):
                files.open(bad)
        with pytest.raises(FileNotFoundError):
            files.open(b"d/gone")
        files.release()
        assert len(os.listdir("/proc/self/fd")) == before + 1  # the root's own fd
