"""Walk a source tree into manifest entries, confined to its root.

Iterative (no recursion), one directory fd open at a time, names as bytes, symlinks recorded as links
and never followed. Devices, FIFOs and sockets are skipped with a reason. Parents always come before
their children, which the receiver relies on.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Generator, Iterator

import xxhash

from zcrepl.agent.transfer.frame import F_SPARSE, MAX_XATTRS, Entry, Kind, encode_xattrs
from zcrepl.agent.transfer.saferoot import MAX_DEPTH, MAX_PATH, TEMP_PREFIX, SafeRoot
from zcrepl.core.errors import UnsafePath
from zcrepl.core.logs import kv

log = logging.getLogger(__name__)

SkipFn = Callable[[bytes, str], None]
_HASH_BUF = 1 << 20
_SPARSE_MIN = 64 << 10  # below this, holes are not worth a special path


def file_digest(fd: int, buf: bytearray | None = None) -> bytes:
    """xxh3-128 of a whole file read through ``fd`` (from offset 0, fd position untouched)."""
    h = xxhash.xxh3_128()
    buf = buf if buf is not None else bytearray(_HASH_BUF)
    mv = memoryview(buf)
    off = 0
    while True:
        n = os.preadv(fd, [mv], off)
        if n == 0:
            return h.digest()
        h.update(mv[:n])
        off += n


class Scanner:
    """Yields the root entry (``b""``) and then every entry below it, parents first."""

    def __init__(self, root: SafeRoot, *, checksum: bool = False, xattrs: bool = False,
                 on_skip: SkipFn | None = None, hardlinks: bool = True) -> None:
        self.root = root
        self.hardlinks = hardlinks
        self.checksum = checksum
        self.xattrs = xattrs
        self.on_skip = on_skip or (lambda _p, _r: None)
        self._buf = bytearray(_HASH_BUF) if checksum else None
        self._links: dict[tuple[int, int], bytes] = {}  # (dev, ino) of files with nlink > 1 -> first path

    def entries(self) -> Iterator[Entry]:
        yield self.root_entry()
        yield from self.below(())

    def below(self, top: tuple[bytes, ...]) -> Iterator[Entry]:
        """Every entry under the directory ``top`` (not ``top`` itself), parents first."""
        st = self.root.lstat(top) if top else os.fstat(self.root.fd)
        if st is None or not stat.S_ISDIR(st.st_mode):
            return
        visited = {(st.st_dev, st.st_ino)}
        stack: list[tuple[bytes, ...]] = [top]
        while stack:
            parts = stack.pop()
            try:
                dfd = self.root.open_dir(parts)
            except (FileNotFoundError, NotADirectoryError, UnsafePath) as err:
                # Replaced or removed between listing its parent and now: the tree changed under us.
                self.on_skip(b"/".join(parts), f"directory changed during the scan ({err})")
                continue
            try:
                subdirs = yield from self._list(dfd, parts, visited)
            finally:
                os.close(dfd)
            stack.extend(reversed(subdirs))

    def _list(
        self, dfd: int, parts: tuple[bytes, ...], visited: set[tuple[int, int]]
    ) -> Generator[Entry, None, list[tuple[bytes, ...]]]:
        with os.scandir(dfd) as it:
            items = sorted((os.fsencode(de.name), de) for de in it)
        subdirs: list[tuple[bytes, ...]] = []
        prefix = b"/".join(parts) + b"/" if parts else b""
        for name, de in items:
            if name.startswith(TEMP_PREFIX):
                continue
            rel = prefix + name
            try:
                st = de.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            entry = self.entry(dfd, parts, name, rel, st)
            if entry is None:
                continue
            yield entry
            if entry.kind is Kind.DIR:
                key = (st.st_dev, st.st_ino)
                if key not in visited:  # bind-mount loops
                    visited.add(key)
                    subdirs.append((*parts, name))
        return subdirs

    def entry(self, dfd: int, parts: tuple[bytes, ...], name: bytes, rel: bytes, st: os.stat_result) -> Entry | None:
        """The manifest entry of ``name`` in directory ``dfd`` (``parts`` below the root), or None if skipped."""
        if len(rel) > MAX_PATH or len(parts) + 1 > MAX_DEPTH:
            self.on_skip(rel, f"path longer than {MAX_PATH} bytes or deeper than {MAX_DEPTH} levels")
            return None
        mode = st.st_mode
        xattrs = self._xattrs(dfd, name) if self.xattrs and not stat.S_ISLNK(mode) else b""
        if stat.S_ISDIR(mode):
            return Entry(Kind.DIR, rel, stat.S_IMODE(mode), st.st_mtime_ns, uid=st.st_uid, gid=st.st_gid,
                         xattrs=xattrs)
        if stat.S_ISREG(mode):
            if st.st_nlink > 1 and self.hardlinks:
                first = self._links.setdefault((st.st_dev, st.st_ino), rel)
                if first != rel:
                    return Entry(Kind.HARDLINK, rel, stat.S_IMODE(mode), st.st_mtime_ns, target=first,
                                 uid=st.st_uid, gid=st.st_gid)
            digest = b""
            if self.checksum:
                try:
                    digest = self._digest(dfd, name)
                except OSError as err:
                    self.on_skip(rel, f"cannot read for --checksum: {err.strerror}")
                    return None
            sparse = F_SPARSE if st.st_size > _SPARSE_MIN and st.st_blocks * 512 < st.st_size else 0
            return Entry(Kind.FILE, rel, stat.S_IMODE(mode), st.st_mtime_ns, st.st_size, digest=digest,
                         uid=st.st_uid, gid=st.st_gid, flags=sparse, xattrs=xattrs)
        if stat.S_ISLNK(mode):
            try:
                target = os.readlink(name, dir_fd=dfd)
            except OSError:
                return None
            return Entry(Kind.SYMLINK, rel, stat.S_IMODE(mode), st.st_mtime_ns, target=target,
                         uid=st.st_uid, gid=st.st_gid)
        kind = "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else (
            "FIFO" if stat.S_ISFIFO(mode) else "socket")
        self.on_skip(rel, f"{kind}: only regular files, directories and symlinks are replicated")
        return None

    def root_entry(self) -> Entry:
        st = os.fstat(self.root.fd)
        return Entry(Kind.DIR, b"", stat.S_IMODE(st.st_mode), st.st_mtime_ns, uid=st.st_uid, gid=st.st_gid,
                     xattrs=self._xattrs(self.root.fd, b".") if self.xattrs else b"")

    @staticmethod
    def _xattrs(dfd: int, name: bytes) -> bytes:
        """Extended attributes of ``name`` in ``dfd`` (never following a symlink), encoded for the wire.

        There is no *xattr(dir_fd=...) in Python; /proc/self/fd/N/name resolves through the held dir fd.
        """
        path = b"/proc/self/fd/%d/%s" % (dfd, name)
        try:
            attrs = []
            for key in sorted(os.listxattr(path, follow_symlinks=False)):
                bkey = os.fsencode(key)
                attrs.append((bkey, os.getxattr(path, bkey, follow_symlinks=False)))
            blob = encode_xattrs(attrs)
            return blob if len(blob) <= MAX_XATTRS else b""
        except OSError:
            return b""

    def _digest(self, dfd: int, name: bytes) -> bytes:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(0, "not a regular file any more")
            return file_digest(fd, self._buf)
        finally:
            os.close(fd)


def log_skip(job_id: int) -> SkipFn:
    def on_skip(path: bytes, reason: str) -> None:
        log.warning("skipped", extra=kv(job=job_id, path=path, reason=reason))

    return on_skip
