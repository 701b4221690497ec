"""A file being received (``FileSlot``) and how its temp file is made: in its parent directory, whose fd the data
connections share (dircache.py), unnamed when it is small (atomic.py), or a resumed partial (partial.py)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from zcrepl.agent.transfer import frame as fr
from zcrepl.agent.transfer.atomic import PREALLOCATE_MIN, AtomicFile
from zcrepl.agent.transfer.frame import Basis, Entry
from zcrepl.agent.transfer.partial import RESUME_MIN
from zcrepl.core.errors import UnsafePath

if TYPE_CHECKING:
    from zcrepl.agent.transfer.apply import TreeWriter


@dataclass(eq=False)
class FileSlot:
    """One needed file being assembled from ranges; committed when the last byte arrives.

    ``fd`` is None when the file could not be opened (the error is recorded): writers then discard
    their bytes. Ranges must not overlap and must cover the file exactly.
    """

    index: int
    entry: Entry
    total: int
    mode: int
    mtime_ns: int
    fd: int | None
    tmp: AtomicFile | None = None
    pfd: int = -1
    pdir: tuple[bytes, ...] | None = None  # ``pfd`` is borrowed from the writer's DirCache for this directory
    plain: bool = False  # ``pfd`` has no default ACL: a new file's mode is open()'s minus the umask
    leaf: bytes = b""
    ranges: list[tuple[int, int]] = field(default_factory=list)
    got: int = 0
    active: int = 0
    changed: bool = False
    failed: bool = False
    keep_partial: bool = False  # the attempt broke: keep what arrived for a resume
    done: list[tuple[int, int]] = field(default_factory=list)  # intervals known written
    basis: Basis | None = None
    basis_fd: int = -1
    opening: bool = True  # the temp file is being created (by the connection whose range came first)


def open_slot(w: TreeWriter, s: FileSlot) -> None:
    """Create the temp file of a slot whose first range arrived (an error is recorded, and the slot failed)."""
    try:
        # Validated when admitted; the leaf is checked again by AtomicFile, a directory by open_dir.
        parts = tuple(s.entry.path.split(b"/"))
        # A watch session's ops move and remove directories: no fd is kept there (see dircache.py).
        s.pdir = None if w.restricted else parts[:-1]
        if s.pdir is not None:
            s.pfd, s.plain = w.data_dirs.acquire(s.pdir)
        else:
            s.pfd = w.root.open_dir(parts[:-1])
        s.leaf = parts[-1]
    except (OSError, UnsafePath) as err:
        w.entry_failed(s.entry.path, err)  # e.g. a parent swapped for a symlink mid-job
        s.failed = True
        return
    try:
        try:
            s.tmp = _new_temp(w, s)
        except FileNotFoundError:
            if s.pdir is None:
                raise
            # The directory held in the cache was removed meanwhile: look the path up again.
            w.data_dirs.drop(s.pdir, s.pfd)
            release_parent(w, s)
            s.pdir = parts[:-1]
            s.pfd, s.plain = w.data_dirs.acquire(s.pdir)
            s.tmp = _new_temp(w, s)
    except BaseException as err:
        release_parent(w, s)
        if not isinstance(err, (OSError, UnsafePath)):
            raise
        w.entry_failed(s.entry.path, err)
        s.failed = True
        return
    s.fd = s.tmp.fd


def _new_temp(w: TreeWriter, s: FileSlot) -> AtomicFile:
    p = w.partials.pop(s.index, None)
    tmp = w.area.take(p, s.pfd, s.leaf) if p is not None else None
    # Small files are unnamed until commit (O_TMPFILE: one directory operation instead of two, nothing left
    # by a kill). The saving is per file: a big one keeps its temp name, where an operator sees it grow
    # and the start-up sweep (leftovers.py) finds it after a kill.
    unnamed = s.total < RESUME_MIN
    mode = s.mode if unnamed and s.plain else None  # created with its final mode: no fchmod at commit
    if tmp is None and s.entry.flags & fr.F_SPARSE:
        tmp = AtomicFile(s.pfd, s.leaf, unnamed=unnamed, mode=mode)  # no preallocation: holes must stay holes
        try:
            os.ftruncate(tmp.fd, s.total)
        except BaseException:
            tmp.discard()
            raise
    elif tmp is None and s.total < PREALLOCATE_MIN:
        tmp = AtomicFile(s.pfd, s.leaf, s.total, unnamed=unnamed, mode=mode)  # nothing to check or reserve
    elif tmp is None:
        with w.space_lock:  # the check and the reservation together, one file at a time
            w.check_space(s.total)
            tmp = AtomicFile(s.pfd, s.leaf, s.total, unnamed=unnamed)
    return tmp


def release_parent(w: TreeWriter, s: FileSlot) -> None:
    """Give back (or close) the slot's parent directory fd."""
    if s.pfd < 0:
        return
    if s.pdir is not None:
        w.data_dirs.release(s.pdir, s.pfd)
    else:
        os.close(s.pfd)
    s.pfd = -1
