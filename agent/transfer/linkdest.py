"""--link-dest (rsync's): a file the destination lacks (or holds in another version) that is unchanged against
one of the link-dest directories is hard-linked from there instead of sent, so a nightly snapshot costs only
what changed. A changed file the destination lacks is sent as a delta against the link-dest copy (the first
directory holding a regular file there), as rsync does with its basis files.

Unchanged means rsync's test: a regular file of the same size, mtime and permission bits, with the owner this
destination would give it (only when ownership is replicated: ``owner_ids``), the same content with
--checksum, and the same extended attributes with --xattrs. The directories are tried in the order given; the
first match wins. The link is made under a temp name and renamed over the path, so a reader sees the old
version or the new, never neither. A snapshot's file with other names is never changed in place afterwards
(``uptodate`` breaks such a link before it fixes metadata), so the snapshot linked from stays as it was.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from typing import TYPE_CHECKING

from zcrepl.agent.transfer.frame import Entry
from zcrepl.agent.transfer.meta import owner_ids, xattrs_match
from zcrepl.agent.transfer.saferoot import SafeRoot, temp_name
from zcrepl.agent.transfer.scan import file_digest
from zcrepl.core.errors import UnsafePath
from zcrepl.core.exportpolicy import KEEP
from zcrepl.core.logs import kv

if TYPE_CHECKING:
    from zcrepl.agent.transfer.apply import TreeWriter

log = logging.getLogger(__name__)


class LinkDest:
    def __init__(self, roots: list[SafeRoot]) -> None:
        self.roots = roots
        self.linked = 0

    def close(self) -> None:
        for r in self.roots:
            r.close()

    def link(self, w: TreeWriter, parts: tuple[bytes, ...], e: Entry) -> bool:
        """Hard-link entry ``e`` (components ``parts``) from the first directory holding it unchanged; False
        when none does (or the link can't be made: too many links, say), and the file is then sent."""
        for root in self.roots:
            try:
                lpfd, lleaf = root.open_parent(parts)
            except (FileNotFoundError, NotADirectoryError, UnsafePath):
                continue
            try:
                if not self._unchanged(w, lpfd, lleaf, e):
                    continue
                self._link_in(w, lpfd, lleaf, parts, e)
            except OSError as err:
                if err.errno not in (errno.EMLINK, errno.EXDEV, errno.EPERM):
                    raise
                log.info("not linked from --link-dest", extra=kv(job=w.job_id, path=e.path, error=str(err)))
                continue
            finally:
                os.close(lpfd)
            self.linked += 1
            return True
        return False

    def basis(self, parts: tuple[bytes, ...]) -> tuple[SafeRoot, os.stat_result] | None:
        """The first directory holding a regular file at ``parts`` (a changed one): a delta basis."""
        for root in self.roots:
            try:
                st = root.lstat(parts)
            except UnsafePath:
                continue
            if st is not None and stat.S_ISREG(st.st_mode):
                return root, st
        return None

    @staticmethod
    def _unchanged(w: TreeWriter, pfd: int, leaf: bytes, e: Entry) -> bool:
        try:
            st = os.lstat(leaf, dir_fd=pfd)
        except FileNotFoundError:
            return False
        if (not stat.S_ISREG(st.st_mode) or st.st_size != e.size or st.st_mtime_ns != e.mtime_ns
                or stat.S_IMODE(st.st_mode) & 0o777 != e.mode & 0o777
                or owner_ids(w.policy, e, st, w.as_root) != (KEEP, KEEP)):
            return False
        if not (w.options.checksum or w.options.xattrs):
            return True
        fd = os.open(leaf, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=pfd)
        try:
            if w.options.checksum and file_digest(fd, w.buf()) != e.digest:
                return False
            return not w.options.xattrs or xattrs_match(fd, e, w.policy)
        finally:
            os.close(fd)

    @staticmethod
    def _link_in(w: TreeWriter, lpfd: int, lleaf: bytes, parts: tuple[bytes, ...], e: Entry) -> None:
        pfd, leaf = w.parent(parts)
        tmp = temp_name(leaf)
        os.link(lleaf, tmp, src_dir_fd=lpfd, dst_dir_fd=pfd, follow_symlinks=False)
        try:
            try:
                st = os.lstat(leaf, dir_fd=pfd)
            except FileNotFoundError:
                st = None
            if st is not None and stat.S_ISDIR(st.st_mode):
                w.clear_dir_for(pfd, leaf, "a file", e.path)
            elif st is not None and w.backup is not None:
                w.backup.keep(pfd, leaf, e.path)
            os.rename(tmp, leaf, src_dir_fd=pfd, dst_dir_fd=pfd)
        except BaseException:
            os.unlink(tmp, dir_fd=pfd)
            raise
        w.note_write()
