"""Metadata that travels besides bytes and modes: ownership, extended attributes, and durability."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os

from zcrepl.agent.transfer import frame as fr
from zcrepl.agent.transfer.frame import Entry

_libc = ctypes.CDLL(None, use_errno=True)
# Who a file we create belongs to: a fresh temp needs no chown when the source owner is us. (A
# setgid parent directory would give it that directory's group; rare enough to leave to the next run.)
_ME = (os.geteuid(), os.getegid())


def syncfs(fd: int) -> None:
    """Flush the whole filesystem holding ``fd``: one call makes every file of the job durable."""
    if _libc.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def apply_meta(fd: int, e: Entry, st: os.stat_result | None = None, *, owner: bool, xattrs: bool) -> None:
    """Ownership (only when ``owner``: the receiver runs as root) and extended attributes (only with
    ``xattrs``) onto an open fd; attributes the source lacks are removed."""
    if owner and (e.uid, e.gid) != ((st.st_uid, st.st_gid) if st is not None else _ME):
        os.fchown(fd, e.uid, e.gid)
    if not xattrs:
        return
    wanted = dict(fr.decode_xattrs(e.xattrs))
    for name in os.listxattr(fd):
        bkey = os.fsencode(name)
        if bkey not in wanted:
            with contextlib.suppress(OSError):
                os.removexattr(fd, bkey)
    for key, value in wanted.items():
        try:
            if os.getxattr(fd, key) == value:
                continue
        except OSError:
            pass
        try:
            os.setxattr(fd, key, value)
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.ENOTSUP):  # e.g. trusted.* as non-root
                raise
