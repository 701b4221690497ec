"""Reading a source file as the scan saw it: the network sender and the same-host copy ask the same two
questions, so they are answered once here."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

from zcrepl.agent.transfer.frame import Entry


def as_scanned(st: os.stat_result, e: Entry) -> bool:
    """The open source file still has the size and mtime its manifest entry announced; otherwise it changed
    since the scan (or while it was read) and its bytes must not be committed as that entry."""
    return st.st_size == e.size and st.st_mtime_ns == e.mtime_ns


def data_segments(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of each data segment in the first ``size`` bytes (SEEK_DATA / SEEK_HOLE), in order;
    what lies between them, and after the last, is holes."""
    off = 0
    while off < size:
        try:
            data = os.lseek(fd, off, os.SEEK_DATA)
        except OSError as err:
            if err.errno != errno.ENXIO:
                raise
            return  # only a hole is left
        if data >= size:
            return
        end = min(os.lseek(fd, data, os.SEEK_HOLE), size)
        yield data, end - data
        off = end
