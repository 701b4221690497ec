"""Reading a source file as the scan saw it: the network sender and the same-host copy ask the same two
questions, so they are answered once here."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

from zcrepl.agent.transfer.frame import Entry
from zcrepl.agent.transfer.saferoot import SafeRoot, validate_name, validate_relpath


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


class SourceFiles:
    """Opens source files as ``SafeRoot.open_read`` does (no symlink followed anywhere, regular files only), but
    keeps the fd of the last parent directory: a sender works through the files of one directory in a row, and
    resolving the parent again (``openat2``) for each of them costs more than the open itself.

    The held directory fd is let go (``release``) whenever its user runs out of work, so it never pins a
    directory for longer than one run of consecutive files. A directory renamed meanwhile is followed by its fd,
    as the scan followed it; what is read is still checked against the scan (``as_scanned``) before it counts.
    """

    def __init__(self, root: SafeRoot) -> None:
        self.root = root
        self._dir: bytes | None = None
        self._dfd = -1

    def open(self, path: bytes) -> tuple[int, os.stat_result]:
        """(fd, its fstat) of the regular file ``path`` below the root; UnsafePath for a path that is not one
        (checked as ``validate_relpath`` does: the parent once per run of files in it, the name every time)."""
        parent, _, leaf = path.rpartition(b"/")
        validate_name(leaf)
        if parent != self._dir:
            self.release()
            self._dfd = self.root.open_dir(validate_relpath(parent))
            self._dir = parent
        return self.root.open_read_at(self._dfd, leaf, path)

    def release(self) -> None:
        dfd, self._dfd, self._dir = self._dfd, -1, None
        if dfd >= 0:
            os.close(dfd)
