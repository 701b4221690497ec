"""Parent directory fds shared by a receiver's data connections: files of one directory arrive together, so
one confined open serves all of them instead of one ``openat2`` per file.

Why a held fd stays safe: it was opened confined (``openat2`` ``RESOLVE_BENEATH``, or the ``O_NOFOLLOW`` walk),
so it names the directory inode that was beneath the root then. A path component later swapped for a symlink
changes nothing for it: nothing is resolved through the path again, files are created in that same inode. The
per-file open had the same property for the moment between opening the parent and creating the file; the cache
stretches that moment to while the directory's files arrive (at most ``KEEP`` idle directories are held).

When it must be dropped: when the directory is no longer where the manifest says. A directory this transfer
removes or moves (``--delete``, a watch session's ops) is never a parent of a file still to come in a full
transfer (entries under a replaced path are not in the manifest; deletions run after the data), but a watch
session may rename or remove directories while files arrive, so the writer only uses the cache outside watch
sessions. A directory removed by someone else meanwhile makes creating a file in it fail with ``ENOENT``: the
caller then drops the entry (:meth:`DirCache.drop`) and opens the path again.

With each fd the cache keeps whether the directory has no default ACL (one ``getxattr`` per directory): a file
created there then gets the mode it is created with, minus the umask, and needs no ``fchmod`` (atomic.py). A
default ACL someone sets on a held directory meanwhile is seen at the cache's next open of it: files created
there before that get the modes that ACL allows, which may be narrower than the source's (the next run, which
compares modes, sets them).
"""

from __future__ import annotations

import errno
import os
import threading
from collections import OrderedDict

from zcrepl.agent.transfer.saferoot import SafeRoot

KEEP = 4
_DEFAULT_ACL = "system.posix_acl_default"
_NO_ACL = (errno.ENODATA, errno.EOPNOTSUPP, errno.ENOTSUP)  # no default ACL; the filesystem has no ACLs


def no_default_acl(fd: int) -> bool:
    """Whether files created in directory ``fd`` get their mode from open()'s mode and the umask alone (False
    when that is not known for sure)."""
    try:
        os.getxattr(fd, _DEFAULT_ACL)
    except OSError as err:
        return err.errno in _NO_ACL
    return False


class DirCache:
    """Reference-counted directory fds by path (parts below the root); an fd in use is never closed."""

    def __init__(self, root: SafeRoot, keep: int = KEEP) -> None:
        self.root = root
        self.keep = keep
        self._lock = threading.Lock()
        # parts -> [fd, users, 1 when the directory has no default ACL else 0]
        self._fds: OrderedDict[tuple[bytes, ...], list[int]] = OrderedDict()
        self._dropped: dict[int, int] = {}  # fd -> users, of fds dropped while in use
        self._closed = False

    def acquire(self, parts: tuple[bytes, ...]) -> tuple[int, bool]:
        """A borrowed fd of directory ``parts`` (errors as ``SafeRoot.open_dir``) and whether the directory has no
        default ACL; give the fd back with ``release``."""
        with self._lock:
            held = self._fds.get(parts)
            if held is not None:
                held[1] += 1
                self._fds.move_to_end(parts)
                return held[0], held[2] == 1
        fd = self.root.open_dir(parts)  # outside the lock: other connections go on meanwhile
        try:
            plain = no_default_acl(fd)
        except BaseException:
            os.close(fd)
            raise
        with self._lock:
            held = self._fds.get(parts)
            if held is not None:  # another connection opened it first: use that one
                held[1] += 1
                os.close(fd)
                return held[0], held[2] == 1
            self._fds[parts] = [fd, 1, int(plain)]
            self._trim()
        return fd, plain

    def release(self, parts: tuple[bytes, ...], fd: int) -> None:
        with self._lock:
            held = self._fds.get(parts)
            if held is not None and held[0] == fd:
                held[1] -= 1
                if self._closed and not held[1]:
                    del self._fds[parts]
                    os.close(fd)
                else:
                    self._trim()
                return
            users = self._dropped.pop(fd) - 1  # dropped while in use: its last user closes it
            if users:
                self._dropped[fd] = users
            else:
                os.close(fd)

    def drop(self, parts: tuple[bytes, ...], fd: int) -> None:
        """Forget ``fd`` for ``parts`` (the directory went away): the next acquire opens the path again. The
        caller still releases its borrowed ``fd``, which closes it."""
        with self._lock:
            held = self._fds.get(parts)
            if held is not None and held[0] == fd:
                del self._fds[parts]
                self._dropped[fd] = held[1]

    def close(self) -> None:
        """Close every idle fd; fds in use are closed by their last ``release``."""
        with self._lock:
            self._closed = True
            for parts in [p for p, held in self._fds.items() if not held[1]]:
                os.close(self._fds.pop(parts)[0])

    def _trim(self) -> None:
        if len(self._fds) <= self.keep:
            return
        for parts in [p for p, held in self._fds.items() if not held[1]][: len(self._fds) - self.keep]:
            os.close(self._fds.pop(parts)[0])
