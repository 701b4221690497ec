"""--backup-dir (rsync --backup --backup-dir): the previous version of every file a run overwrites or deletes
goes to the backup directory, its path below the job's root kept.

Overwrites keep the reader's guarantee whole: the old file is first *hard-linked* into the backup directory
(under a temp name, then renamed over any older backup of that path), and only then is the new version renamed
over it. A reader of the destination sees the old version or the new one, never neither; a crash between the
two steps leaves the old version in place and a copy of it in the backup (harmless, the next run redoes it).
rsync renames the old file into the backup directory instead, leaving a window in which the path is missing.

Deletions move the entry into the backup directory by rename (a directory: every entry below it, then the
emptied directories are removed), so nothing a run deletes is lost. Both need the backup directory on the
destination's filesystem (hard links and renames don't cross filesystems): ``open_backup`` refuses otherwise.

Symlinks are backed up like files (as links); directories themselves are not (rsync neither): only their
contents.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import TYPE_CHECKING

from zcrepl.agent.transfer.atomic import _open_subdir, remove_entry
from zcrepl.agent.transfer.saferoot import SafeRoot, temp_name, validate_relpath
from zcrepl.core.errors import TransferError, UnsafePath
from zcrepl.core.paths import show

if TYPE_CHECKING:
    from zcrepl.agent.transfer.flush import JobFlush

_TEMP_ATTEMPTS = 8


class DirRefused(TransferError):
    """A --backup-dir or --link-dest directory this destination can't use; another attempt can't help."""

    retryable = False


def open_backup(export: SafeRoot, rel: tuple[bytes, ...], job_root: SafeRoot, label: str) -> SafeRoot:
    """The backup directory (created when missing), after checking it shares the job root's filesystem."""
    fd = export.open_dir(rel, create=True, mode=0o755)
    path = export.path + (b"/" + b"/".join(rel) if rel else b"")
    if os.fstat(fd).st_dev != os.fstat(job_root.fd).st_dev:
        os.close(fd)
        raise DirRefused(f"--backup-dir {show(path)} is on another filesystem than {label}; previous versions "
                          "are moved there by rename and hard link, which can't cross filesystems: choose a "
                          "directory on the destination's filesystem")
    return SafeRoot.from_fd(fd, path)


class Backup:
    """Moves previous versions into one job's backup directory; counts them in ``kept``."""

    def __init__(self, root: SafeRoot, *, fsync: bool = False) -> None:
        self.root = root
        self.fsync = fsync  # --durability file: each backup's directory entry is made durable as it is made
        self.kept = 0
        self.touched: set[tuple[bytes, ...]] = set()  # backup directories given entries (--durability job)

    def close(self) -> None:
        self.root.close()

    def keep(self, pfd: int, leaf: bytes, rel: bytes) -> None:
        """Before ``leaf`` in ``pfd`` (path ``rel``) is replaced: hard-link its current version into the backup.

        Nothing happens when nothing stands there, or a directory does (the caller replaces that through
        ``take``)."""
        try:
            st = os.lstat(leaf, dir_fd=pfd)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            return
        bfd, bleaf = self._parent(rel)
        try:
            for _ in range(_TEMP_ATTEMPTS):
                tmp = temp_name(bleaf)
                try:
                    os.link(leaf, tmp, src_dir_fd=pfd, dst_dir_fd=bfd, follow_symlinks=False)
                    break
                except FileExistsError:
                    continue
            else:
                raise FileExistsError(errno.EEXIST, "no free temp name in the backup directory", bleaf)
            try:
                self._into(bfd, tmp, bleaf)
            except BaseException:
                os.unlink(tmp, dir_fd=bfd)
                raise
            if self.fsync:
                os.fsync(bfd)
        finally:
            os.close(bfd)
        self.kept += 1

    def take(self, dfd: int, name: bytes, rel: bytes) -> int:
        """Delete ``name`` in ``dfd`` (path ``rel``) by moving it into the backup; how many entries went."""
        try:
            st = os.lstat(name, dir_fd=dfd)
        except FileNotFoundError:
            return 0
        if not stat.S_ISDIR(st.st_mode):
            bfd, bleaf = self._parent(rel)
            try:
                self._into(bfd, name, bleaf, src_fd=dfd)
                if self.fsync:
                    os.fsync(bfd)
            finally:
                os.close(bfd)
            self.kept += 1
            return 1
        sub = _open_subdir(dfd, name)
        if sub is None:  # replaced by something else meanwhile
            return self.take(dfd, name, rel)
        gone = 0
        try:
            with os.scandir(sub) as it:
                children = [os.fsencode(de.name) for de in it]
            for child in children:
                gone += self.take(sub, child, rel + b"/" + child)
        finally:
            os.close(sub)
        os.rmdir(name, dir_fd=dfd)
        return gone + 1

    def _parent(self, rel: bytes) -> tuple[int, bytes]:
        parts = validate_relpath(rel)
        self.touched.update(parts[:depth] for depth in range(len(parts)))  # made on the way, with their entries
        return self.root.open_parent(parts, create=True, mode=0o755)

    def flush_into(self, flush: JobFlush) -> None:
        """``--durability job``: hand every backup directory that got an entry to the job's flush."""
        for parts in sorted(self.touched, key=len, reverse=True):
            try:
                fd = self.root.open_dir(parts)
            except (OSError, UnsafePath):
                continue
            if flush.changed_since_start(os.fstat(fd)):
                flush.dir_changed(fd)
            else:
                os.close(fd)

    @staticmethod
    def _into(bfd: int, name: bytes, bleaf: bytes, *, src_fd: int = -1) -> None:
        """Rename ``name`` (in ``src_fd``, default ``bfd``) to ``bleaf`` in ``bfd``, over an older backup: a file
        is replaced atomically; a directory in the way (an older backup of a directory of that name) goes."""
        src = bfd if src_fd < 0 else src_fd
        try:
            os.rename(name, bleaf, src_dir_fd=src, dst_dir_fd=bfd)
        except OSError as err:
            if err.errno not in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                raise
            remove_entry(bfd, bleaf)
            os.rename(name, bleaf, src_dir_fd=src, dst_dir_fd=bfd)
