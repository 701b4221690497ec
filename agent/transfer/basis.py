"""What of a needed file the destination already has: a partial of this very version (resume) or an
older version (delta). Either becomes a NEED_BASIS the sender answers with REUSE + the missing ranges."""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

from zcrepl.agent.transfer import delta
from zcrepl.agent.transfer import frame as fr
from zcrepl.agent.transfer.frame import Basis, Entry
from zcrepl.agent.transfer.partial import RESUME_MIN, intervals_digest
from zcrepl.core.errors import UnsafePath

if TYPE_CHECKING:
    from zcrepl.agent.transfer.apply import TreeWriter


def find_basis(w: TreeWriter, index: int, parts: tuple[bytes, ...], e: Entry) -> Basis | None:
    """What of this file is already here: a partial of this very version, or an older version."""
    if e.flags & fr.F_SPARSE:
        return None  # only data segments travel anyway
    if e.size >= RESUME_MIN:
        p = w.area.find(e.path, e.size, e.mtime_ns)
        if p is not None:
            fd = w.area.open_part(p)
            if fd is not None:
                try:
                    digest = intervals_digest(fd, p.intervals, w.buf())
                finally:
                    os.close(fd)
                if digest:
                    w.partials[index] = p
                    b = Basis(index, fr.BasisKind.PARTIAL, intervals=tuple(p.intervals), digest=digest)
                    w.bases[index] = b
                    return b
    if e.size < delta.DELTA_MIN:
        return None
    st = w.root.lstat(parts)
    if (st is None or not stat.S_ISREG(st.st_mode)) and w.link_dest is not None:
        # Not here (a new snapshot): the copy in a --link-dest directory is the older version to delta against.
        found = w.link_dest.basis(parts)
        if found is not None:
            w.basis_roots[index], st = found
    if st is None or not stat.S_ISREG(st.st_mode) or st.st_size < delta.DELTA_MIN:
        w.basis_roots.pop(index, None)
        return None
    # Hashes come later (complete_delta): first the caller hints the sender, so both ends hash at once.
    b = Basis(index, fr.BasisKind.DELTA, delta.block_size(e.size))
    w.bases[index] = b
    return b


def complete_delta(w: TreeWriter, b: Basis) -> Basis:
    """Hash the destination's current version of a hinted file. If it is gone or unreadable, the basis
    has no blocks and the sender sends everything."""
    e = w.needed.get(b.index)
    parent, _, leaf = e.path.rpartition(b"/") if e is not None else (b"", b"", b"")
    parts = (*(w.listing.parts_of(parent) or ()), leaf)
    try:
        if e is None:  # its bytes already came whole: nothing to hash
            raise FileNotFoundError(b.index)
        fd = w.basis_roots.get(b.index, w.root).open_read(parts)
    except (OSError, UnsafePath):
        hashes: list[bytes] = []
    else:
        try:
            hashes, _ = delta.hash_blocks(fd, os.fstat(fd).st_size, b.block, w.buf())
        except OSError:
            hashes = []
        finally:
            os.close(fd)
    full = Basis(b.index, fr.BasisKind.DELTA, b.block, tuple(hashes))
    w.bases[b.index] = full
    return full
