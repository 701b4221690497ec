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
                    b = Basis(index, fr.BASIS_PARTIAL, intervals=tuple(p.intervals), digest=digest)
                    w.bases[index] = b
                    return b
    if e.size < delta.DELTA_MIN:
        return None
    st = w.root.lstat(parts)
    if st is None or not stat.S_ISREG(st.st_mode) or st.st_size < delta.DELTA_MIN:
        return None
    block = delta.block_size(e.size)
    fd = w.root.open_read(parts)
    try:
        hashes, _ = delta.hash_blocks(fd, st.st_size, block, w.buf())
    finally:
        os.close(fd)
    b = Basis(index, fr.BASIS_DELTA, block, tuple(hashes))
    w.bases[index] = b
    return b
