"""The "already there" path of a receiver: a destination file that matches the entry by size and mtime (or
content, with --checksum) is kept, and drifted metadata fixed.

The fix is made in place only when the file has no other name. One with several links (``st_nlink > 1``)
may share its inode with a file outside the export (or outside the job), so it is replaced by a local copy
(temp + rename) and its other names keep the old inode untouched: nothing outside can be altered through a
hard link (issue 9, finding 9).
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

from zcrepl.agent.transfer.atomic import AtomicFile
from zcrepl.agent.transfer.frame import Entry
from zcrepl.agent.transfer.kcopy import copy_range
from zcrepl.agent.transfer.meta import apply_meta, owner_ids, xattrs_match
from zcrepl.agent.transfer.saferoot import lstat_at
from zcrepl.agent.transfer.scan import file_digest
from zcrepl.core.exportpolicy import KEEP

if TYPE_CHECKING:
    from zcrepl.agent.transfer.apply import TreeWriter


def up_to_date(w: TreeWriter, parts: tuple[bytes, ...], e: Entry) -> bool:
    """True when the destination already holds this file; fixes mode/mtime/owner drift.

    The fix is made in place only when the file has no other name: one with several links (st_nlink > 1)
    may share its inode with a file outside the export, so it is replaced by a copy (temp + rename)
    instead, and the other names keep the old inode untouched.
    """
    pfd, leaf = w.parent(parts)
    st = lstat_at(pfd, leaf)
    if st is None or not stat.S_ISREG(st.st_mode) or st.st_size != e.size:
        return False
    if not w.options.checksum and st.st_mtime_ns != e.mtime_ns:
        return False
    meta_ok = (stat.S_IMODE(st.st_mode) == e.mode & 0o777
               and owner_ids(w.policy, e, st, w.as_root) == (KEEP, KEEP))
    if not w.options.checksum and meta_ok and not w.options.xattrs:
        return True
    fd = os.open(leaf, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=pfd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != e.size:
            return False
        if w.options.checksum and file_digest(fd, w.buf()) != e.digest:
            return False
        if st.st_nlink > 1:
            if not (meta_ok and st.st_mtime_ns == e.mtime_ns
                    and (not w.options.xattrs or xattrs_match(fd, e, w.policy))):
                _replace_linked(w, pfd, leaf, fd, e)
            return True
        w.note_write()
        if stat.S_IMODE(st.st_mode) != e.mode & 0o777:
            os.fchmod(fd, e.mode & 0o777)
        apply_meta(fd, e, st, policy=w.policy, as_root=w.as_root, xattrs=w.options.xattrs)
        if st.st_mtime_ns != e.mtime_ns:
            os.utime(fd, ns=(st.st_atime_ns, e.mtime_ns))
        if not (meta_ok and st.st_mtime_ns == e.mtime_ns) or w.options.xattrs:
            w.file_changed(parts)
    finally:
        os.close(fd)
    return True

def _replace_linked(w: TreeWriter, pfd: int, leaf: bytes, fd: int, e: Entry) -> None:
    """A fresh copy of a multiply-linked file, with this entry's metadata, renamed over ``leaf``."""
    w.check_space(e.size)
    with AtomicFile(pfd, leaf, e.size) as tmp:
        if copy_range(fd, tmp.fd, 0, e.size, []) != e.size:
            raise OSError(0, "the file changed while it was copied to break its hard link")
        apply_meta(tmp.fd, e, policy=w.policy, as_root=w.as_root, xattrs=w.options.xattrs)
        tmp.commit(e.mode, e.mtime_ns, fsync=w.fsync_files, flush=w.flush, size=e.size)
    w.note_write()
