"""Directories and symlinks of a manifest, applied at the destination as their entries arrive (file contents
go through ``TreeWriter.slot``; directory metadata is set at the end, children first)."""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

from zcrepl.agent.transfer.atomic import replace_symlink
from zcrepl.agent.transfer.frame import Entry
from zcrepl.agent.transfer.meta import owner_ids
from zcrepl.agent.transfer.saferoot import lstat_at
from zcrepl.core.exportpolicy import KEEP

if TYPE_CHECKING:
    from zcrepl.agent.transfer.apply import TreeWriter


def ensure_dir(w: TreeWriter, parts: tuple[bytes, ...]) -> None:
    """A directory entry: what stands there made a directory we can write into until the end."""
    pfd, leaf = w.parent(parts)
    st = lstat_at(pfd, leaf)
    if st is not None and stat.S_ISDIR(st.st_mode):
        if st.st_mode & 0o700 != 0o700 and os.geteuid() != 0:
            dfd = w.root.open_dir(parts)  # we must be able to write into it until the end
            try:
                os.fchmod(dfd, stat.S_IMODE(st.st_mode) | 0o700)
            finally:
                os.close(dfd)
        return
    if st is not None:
        w.count(deleted=w.remove(pfd, leaf, b"/".join(parts)))  # a file or link where the source has a dir
    try:
        os.mkdir(leaf, 0o700, dir_fd=pfd)
    except FileExistsError:
        pass
    else:
        w.made_dir(parts)
    w.note_write()

def apply_symlink(w: TreeWriter, parts: tuple[bytes, ...], e: Entry) -> None:
    """A symlink entry: kept when it already matches (its mtime set in place), else replaced atomically."""
    pfd, leaf = w.parent(parts)
    st = lstat_at(pfd, leaf)
    # A symlink with other names (hard links to a link) is replaced, never touched in place.
    if (st is not None and stat.S_ISLNK(st.st_mode) and os.readlink(leaf, dir_fd=pfd) == e.target
            and owner_ids(w.policy, e, st, w.as_root) == (KEEP, KEEP)
            and (st.st_mtime_ns == e.mtime_ns or st.st_nlink == 1)):
        if st.st_mtime_ns != e.mtime_ns:
            os.utime(leaf, ns=(st.st_atime_ns, e.mtime_ns), dir_fd=pfd, follow_symlinks=False)
            w.note_write()
        w.count(skipped=1)
        return
    if st is not None and stat.S_ISDIR(st.st_mode):
        w.clear_dir_for(pfd, leaf, "a symlink", e.path)
    elif st is not None and w.backup is not None:
        w.backup.keep(pfd, leaf, e.path)
    replace_symlink(pfd, leaf, e.target, e.mtime_ns)
    w.note_write()
    uid, gid = owner_ids(w.policy, e, None, w.as_root)
    if (uid, gid) != (KEEP, KEEP):
        os.chown(leaf, uid, gid, dir_fd=pfd, follow_symlinks=False)
