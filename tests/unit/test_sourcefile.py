"""The two questions the sender and the same-host copy ask of a source file, answered once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from zcrepl.agent.transfer.frame import Entry, Kind
from zcrepl.agent.transfer.sourcefile import as_scanned, data_segments

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
