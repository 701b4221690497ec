"""Walk a source tree into manifest entries, confined to its root.

Iterative (no recursion), names as bytes, symlinks recorded as links and never followed; parents always come
before their children, which the receiver relies on. Any depth Linux allows: each directory is opened from
its parent's fd (``_Path`` holds fds for the deepest few levels of the current path only), and a path is
limited only by what a manifest entry can carry (``MAX_PATH``, 64 KiB).

Filters (rsync's ``--exclude``/``--include`` rules, ``zcrepl.core.filters``) leave entries out on purpose: an
excluded entry is not announced and an excluded directory is not descended. They are not skips.

Nothing is left out silently. Every entry that is not replicated, or not entirely, goes to ``on_skip`` with
one sentence saying why: devices, FIFOs and sockets; a path too long for the wire; extended attributes that
cannot be read or are too large; a directory that vanished during the scan; an unreadable directory. A
regular file the agent may not read is a file error (``on_skip.error``), not a skip: it should have been
copied. An entry the agent may not read (``os.access`` says so) is still announced, flagged ``F_UNREADABLE``:
the receiver then keeps what it has under that name (a directory with all its contents), so an unreadable
source never deletes a good copy.
"""

from __future__ import annotations

import bisect
import errno
import logging
import os
import stat
import sys
import threading
from collections.abc import Generator, Iterator
from typing import Protocol

import xxhash

from zcrepl.agent.transfer.frame import F_LINKED, F_SPARSE, F_UNREADABLE, MAX_XATTRS, Entry, Kind, encode_xattrs
from zcrepl.agent.transfer.saferoot import MAX_PATH, TEMP_PREFIX, SafeRoot
from zcrepl.core.errors import TransferError, UnsafePath
from zcrepl.core.filters import CLEAR, IGNORE_FILE, Filter, FilterError, check_rule, collapse, from_lines
from zcrepl.core.logs import kv
from zcrepl.core.paths import show
from zcrepl.core.types import SKIPPED_LISTED, Skipped

log = logging.getLogger(__name__)

_HASH_BUF = 1 << 20
_SPARSE_MIN = 64 << 10  # below this, holes are not worth a special path
_KEEP_FDS = 16  # directory fds the walk holds at most, whatever the depth
_LISTED_PATH = 4096  # bytes of a skipped entry's path that are reported (the log has it whole)
_CAP_DAC_READ_SEARCH = 2
_IGNORE_MAX = 1 << 20  # bytes of a .zcignore read; a longer one fails the transfer with a sentence
CHUNK = 512  # entries per list of ``Scanner.chunks`` (a directory's listing is held whole anyway)
_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()  # os.fsencode's
_S_IFMT, _S_IFDIR, _S_IFREG = 0o170000, stat.S_IFDIR, stat.S_IFREG
_TEMP_END = TEMP_PREFIX[:-1] + bytes([TEMP_PREFIX[-1] + 1])  # the first name past every name in TEMP_PREFIX


class SkipFn(Protocol):
    def __call__(self, path: bytes, reason: str, special: bool = False) -> None: ...

    def error(self, path: bytes, reason: str) -> None: ...


class Skips:
    """What a transfer left out, in two kinds kept apart: entries skipped on purpose (specials, paths too long,
    unreadable directories, files that vanished) and file errors (regular files that should have been copied
    and were not). Every one is logged and counted; the first ``SKIPPED_LISTED`` of each kind are kept for
    the report. Data connection threads report too, hence the lock."""

    def __init__(self, job_id: int) -> None:
        self.job_id = job_id
        self.total = 0  # skipped entries (TransferStats.entries_skipped)
        self.special = 0  # devices, FIFOs, sockets (the old skipped_special counter)
        self.errors = 0  # file errors (TransferStats.file_errors)
        self.listed: list[Skipped] = []
        self._lock = threading.Lock()
        self._kept = {False: 0, True: 0}

    def __call__(self, path: bytes, reason: str, special: bool = False) -> None:
        log.warning("skipped", extra=kv(job=self.job_id, path=path, reason=reason))
        with self._lock:
            self.total += 1
            self.special += special
            self._list(path, reason, False)

    def error(self, path: bytes, reason: str) -> None:
        log.warning("file not replicated", extra=kv(job=self.job_id, path=path, reason=reason))
        with self._lock:
            self.errors += 1
            self._list(path, reason, True)

    def _list(self, path: bytes, reason: str, error: bool) -> None:
        if self._kept[error] < SKIPPED_LISTED:
            self._kept[error] += 1
            if len(path) > _LISTED_PATH:
                reason += f" (the path is cut here at {_LISTED_PATH} of its {len(path)} bytes)"
            self.listed.append(Skipped(path[:_LISTED_PATH], reason, error))

    def last(self) -> str:
        """The latest listed entry as "path: reason" ("" for none)."""
        with self._lock:
            return f"{show(self.listed[-1].path)}: {self.listed[-1].reason}" if self.listed else ""


UNREADABLE = "not replicated, and the destination keeps what it has there; make it readable by zc-agent and run " \
             "the job again"


def source_trouble(skips: SkipFn, path: bytes, err: BaseException, *, watch: bool = False) -> None:
    """Report a source file that could not be opened for sending (rsync's semantics).

    Vanished (removed, or a directory above it removed or replaced, since the scan): skipped, not an error,
    as rsync's "file has vanished" is a warning (exit 24): the destination keeps whatever it has there, as it
    keeps any file the source no longer has. Anything else the OS refuses (permission denied, an I/O error, a
    symlink swapped in): a file error. A watch session reports neither of the vanished kind: the watcher saw
    that change too and ships it in a later set.
    """
    if isinstance(err, UnsafePath) or (isinstance(err, OSError) and err.errno in (errno.ENOENT, errno.ENOTDIR)):
        if not watch:
            why = err.strerror if isinstance(err, OSError) else str(err)
            skips(path, f"vanished from the source during the job ({why}): not replicated")
        return
    skips.error(path, f"cannot be read at the source ({getattr(err, 'strerror', None) or err}): {UNREADABLE}")


def source_changed(skips: SkipFn, path: bytes, *, watch: bool = False) -> None:
    """A file whose size or mtime moved while it was read: what arrived is discarded, the destination keeps
    what it had. A file error for a job (its content as of the scan never made it); a watch session ships
    it again with the change set the watcher saw."""
    if not watch:
        skips.error(path, "changed at the source while it was read: not replicated, and the destination keeps "
                          "what it has there; run the job again once the file is quiet (or use a watch rule)")


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


def reads_everything() -> bool:
    """True when the kernel lets this process read any file and list any directory on a local filesystem
    (CAP_DAC_READ_SEARCH in its effective set, as a root agent has): the scan then spares itself one access
    check per entry. What a network filesystem refuses even so fails the attempt with its error."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"CapEff:"):
                    return bool(int(line.split()[1], 16) >> _CAP_DAC_READ_SEARCH & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def ignore_rules(root: SafeRoot, label: str) -> list[str]:
    """The rules of the ``.zcignore`` at the top of ``root`` (none when there is none), in job form.

    Raises TransferError naming the file and the line when a rule is one rsync would refuse, so a typo
    never silently sends (or, at a destination with --delete, deletes) what it meant to leave alone.
    """
    try:
        fd = root.open_read((IGNORE_FILE,))
    except (FileNotFoundError, UnsafePath):
        return []  # absent, or not a regular file: no rules (a symlink there is never followed)
    except OSError as err:
        raise TransferError(f"{label}/{IGNORE_FILE.decode()}: cannot read it ({err.strerror}); fix its "
                            "permissions or remove it") from err
    try:
        data = os.pread(fd, _IGNORE_MAX + 1, 0)
    finally:
        os.close(fd)
    if len(data) > _IGNORE_MAX:
        raise TransferError(f"{label}/{IGNORE_FILE.decode()} is larger than {_IGNORE_MAX:,} bytes; keep it to "
                            "patterns (merge them with wildcards)")
    rules = from_lines(data, include=False)
    for rule in rules:
        try:
            if rule != CLEAR:
                check_rule(rule)
        except FilterError as err:
            raise TransferError(f"{label}/{IGNORE_FILE.decode()}: {err}") from None
    return collapse(rules)


def tree_filter(root: SafeRoot, rules: tuple[str, ...], label: str) -> Filter:
    """A job's rules, then its tree's ``.zcignore`` (a rule the operator gave wins over the file's)."""
    return Filter(tuple(rules) + tuple(ignore_rules(root, label)))


class _Path:
    """The directory being listed, as names below the walk's top, and fds for the deepest ``_KEEP_FDS`` of its
    ancestors. A directory is opened from its parent's fd (one ``O_NOFOLLOW`` step); a parent whose fd was
    let go is opened again from the top in pieces (``SafeRoot.open_below``), which a walk needs only when it
    comes back up from deeper than ``_KEEP_FDS`` levels to a directory with more subdirectories."""

    def __init__(self, root: SafeRoot, top: tuple[bytes, ...]) -> None:
        self.root = root
        self.top = top
        self.top_fd = root.open_dir(top) if top else os.dup(root.fd)
        self.names: list[bytes] = []
        self.fds: list[int] = []  # -1 where let go; the held ones are always the deepest (a suffix)
        self.low = 0  # shallowest level whose fd is held
        self.rel = bytearray(b"/".join(top))  # the current directory's path below the root
        self._ends: list[int] = []

    def prefix(self) -> bytes:
        return bytes(self.rel) + b"/" if self.rel else b""

    def enter(self, level: int, name: bytes) -> int:
        """Make ``name`` in the directory at ``level`` (0: the top) current and return its fd (borrowed)."""
        self._truncate(level)
        parent = self._fd(level - 1)
        self._ends.append(len(self.rel))
        self.rel += (b"/" if self.rel else b"") + name
        try:
            fd = self.root.open_child(parent, name, bytes(self.rel))
        except BaseException:
            del self.rel[self._ends.pop():]
            raise
        self.names.append(name)
        self.fds.append(fd)
        if len(self.fds) - self.low > _KEEP_FDS:
            os.close(self.fds[self.low])
            self.fds[self.low] = -1
            self.low += 1
        return fd

    def _truncate(self, level: int) -> None:
        while len(self.names) > level:
            self.names.pop()
            fd = self.fds.pop()
            if fd >= 0:
                os.close(fd)
            del self.rel[self._ends.pop():]
        self.low = min(self.low, len(self.fds))

    def _fd(self, i: int) -> int:
        if i < 0:
            return self.top_fd
        if self.fds[i] < 0:  # let go, and so is every level above it: open it from the top
            self.fds[i] = self.root.open_below(self.top_fd, self.top, self.names[: i + 1])
            self.low = i
        return self.fds[i]

    def close(self) -> None:
        self._truncate(0)
        os.close(self.top_fd)


class Scanner:
    """Yields the root entry (``b""``) and then every entry below it, parents first."""

    def __init__(self, root: SafeRoot, *, checksum: bool = False, xattrs: bool = False,
                 on_skip: SkipFn | None = None, hardlinks: bool = True, filter: Filter | None = None) -> None:
        self.root = root
        self.filter = filter or Filter()
        self.hardlinks = hardlinks
        self.checksum = checksum
        self.xattrs = xattrs
        self.on_skip: SkipFn = on_skip or Skips(0)
        self.check_access = not reads_everything()
        self._buf = bytearray(_HASH_BUF) if checksum else None
        self._links: dict[tuple[int, int], bytes] = {}  # (dev, ino) of files with nlink > 1 -> first path

    def entries(self) -> Iterator[Entry]:
        yield self.root_entry()
        yield from self.below(())

    def chunks(self) -> Iterator[list[Entry]]:
        """``entries()`` in lists of at most ``CHUNK`` entries (a sender moves them a list at a time)."""
        yield [self.root_entry()]
        yield from self._walk(())

    def below(self, top: tuple[bytes, ...]) -> Iterator[Entry]:
        """Every entry under the directory ``top`` (not ``top`` itself), parents first."""
        for chunk in self._walk(top):
            yield from chunk

    def _walk(self, top: tuple[bytes, ...]) -> Iterator[list[Entry]]:
        st = self.root.lstat(top) if top else os.fstat(self.root.fd)
        if st is None or not stat.S_ISDIR(st.st_mode):
            return
        visited = {(st.st_dev, st.st_ino)}
        path = _Path(self.root, top)
        try:
            # (level of the parent, name): a directory still to list; level 0 is the top.
            stack: list[tuple[int, bytes]] = []
            subdirs = yield from self._list(path.top_fd, path.prefix(), visited)
            stack.extend((0, n) for n in reversed(subdirs))
            while stack:
                level, name = stack.pop()
                try:
                    dfd = path.enter(level, name)
                except (FileNotFoundError, NotADirectoryError, UnsafePath) as err:
                    # Replaced or removed between listing its parent and now: the tree changed under us.
                    self.on_skip(path.prefix() + name, f"directory changed during the scan ({err})")
                    continue
                except PermissionError as err:
                    # Announced as readable: the destination would delete what it has below it. Stop instead.
                    raise TransferError(f'"{show(path.prefix() + name)}": {err.strerror}; the directory '
                                        "passed the access check but cannot be listed (a network filesystem?); "
                                        "fix its permissions or run zc-agent as a user that can read it") from err
                subdirs = yield from self._list(dfd, path.prefix(), visited)
                stack.extend((level + 1, n) for n in reversed(subdirs))
        finally:
            path.close()

    def _list(self, dfd: int, prefix: bytes,
              visited: set[tuple[int, int]]) -> Generator[list[Entry], None, list[bytes]]:
        """The entries of the directory ``dfd`` whose path below the root is ``prefix``, in lists of at most
        ``CHUNK``; returns the names of its subdirectories to descend into.

        A regular file with one name is the entry of a million-file tree nearly every time, and a no-change
        re-sync of such a tree is this loop and little else: its entry is built here, from the stat alone,
        as one tuple (``Entry``'s own ``__new__`` is a Python function), unless an option (checksum, xattrs,
        access checks) has more to ask of it; everything else goes through ``entry``.
        """
        # listdir and lstat, not scandir: a DirEntry costs more to make than it saves (its d_type is not
        # enough, every entry needs its stat). One encode per directory, not an os.fsencode per name: a
        # name never holds a NUL.
        listed = os.listdir(dfd)
        if not listed:
            return []
        names = sorted("\0".join(listed).encode(_FS_ENCODING, _FS_ERRORS).split(b"\0"))
        del listed
        # Our temp names sort together: one cut, not a test per name.
        temp = bisect.bisect_left(names, TEMP_PREFIX)
        del names[temp : bisect.bisect_left(names, _TEMP_END, temp)]
        if not names:
            return []
        subdirs: list[bytes] = []
        flt = self.filter if self.filter else None  # Filter.__bool__ once per directory, not per entry
        make = self.entry
        plain = not (self.checksum or self.xattrs or self.check_access)
        # Names are at most 255 bytes on Linux: the path length is checked per entry only near the limit.
        near_limit = len(prefix) + max(map(len, names)) > MAX_PATH
        new, file_kind, lstat = tuple.__new__, Kind.FILE, os.lstat
        for lo in range(0, len(names), CHUNK):
            out: list[Entry] = []
            for name in names[lo : lo + CHUNK]:
                rel = prefix + name
                try:
                    st = lstat(name, dir_fd=dfd)
                except FileNotFoundError:
                    continue
                mode = st.st_mode
                if flt is not None and flt.excluded(rel, mode & _S_IFMT == _S_IFDIR):
                    continue
                if plain and mode & _S_IFMT == _S_IFREG and st.st_nlink == 1 and not near_limit:
                    size = st.st_size
                    out.append(new(Entry, (file_kind, rel, mode & 0o7777, st.st_mtime_ns, size, b"", b"",
                                           st.st_uid, st.st_gid,
                                           F_SPARSE if size > _SPARSE_MIN and st.st_blocks * 512 < size else 0, b"")))
                    continue
                entry = make(dfd, (), name, rel, st)
                if entry is None:
                    continue
                out.append(entry)
                if entry.kind is Kind.DIR and not entry.flags & F_UNREADABLE:
                    key = (st.st_dev, st.st_ino)
                    if key not in visited:  # bind-mount loops
                        visited.add(key)
                        subdirs.append(name)
            if out:
                yield out
        return subdirs

    def entry(self, dfd: int, parts: tuple[bytes, ...], name: bytes, rel: bytes, st: os.stat_result) -> Entry | None:
        """The manifest entry of ``name`` in directory ``dfd`` (path ``rel`` below the root; ``parts`` is not
        needed any more), or None when it is skipped (``on_skip`` says why)."""
        if len(rel) > MAX_PATH:
            self.on_skip(rel, f"the path is {len(rel)} bytes long; a manifest entry carries at most {MAX_PATH}")
            return None
        mode = st.st_mode
        xattrs = self._xattrs(dfd, name, rel) if self.xattrs and not stat.S_ISLNK(mode) else b""
        if stat.S_ISDIR(mode):
            return self._dir_entry(dfd, name, rel, st, xattrs)
        if stat.S_ISREG(mode):
            return self._file_entry(dfd, name, rel, st, xattrs)
        if stat.S_ISLNK(mode):
            return self._symlink_entry(dfd, name, rel, st)
        kind = "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else (
            "FIFO" if stat.S_ISFIFO(mode) else "socket")
        self.on_skip(rel, f"{kind}: only regular files, directories and symlinks are replicated", special=True)
        return None

    def _dir_entry(self, dfd: int, name: bytes, rel: bytes, st: os.stat_result, xattrs: bytes) -> Entry:
        flags = 0
        if self.check_access and not _may(dfd, name, os.R_OK | os.X_OK):
            flags = F_UNREADABLE
            self.on_skip(rel, "directory not readable by zc-agent: its contents are not replicated, and the "
                              "destination keeps what it has there")
        return Entry(Kind.DIR, rel, stat.S_IMODE(st.st_mode), st.st_mtime_ns, uid=st.st_uid, gid=st.st_gid,
                     flags=flags, xattrs=xattrs)

    def _file_entry(self, dfd: int, name: bytes, rel: bytes, st: os.stat_result, xattrs: bytes) -> Entry | None:
        mode = st.st_mode
        if self.check_access and not _may(dfd, name, os.R_OK):
            return self._unreadable(rel, st, os.strerror(errno.EACCES))
        linked = 0
        if st.st_nlink > 1 and self.hardlinks:
            first = self._links.setdefault((st.st_dev, st.st_ino), rel)
            if first != rel:
                return Entry(Kind.HARDLINK, rel, stat.S_IMODE(mode), st.st_mtime_ns, target=first,
                             uid=st.st_uid, gid=st.st_gid)
            linked = F_LINKED  # later names of this inode are HARDLINK entries naming this one
        digest = b""
        if self.checksum:
            try:
                digest = self._digest(dfd, name)
            except OSError as err:
                if err.errno in (errno.ENOENT, errno.ENOTDIR):
                    self.on_skip(rel, f"vanished from the source during the scan ({err.strerror})")
                    return None
                return self._unreadable(rel, st, str(err.strerror or err))
        sparse = F_SPARSE if st.st_size > _SPARSE_MIN and st.st_blocks * 512 < st.st_size else 0
        return Entry(Kind.FILE, rel, stat.S_IMODE(mode), st.st_mtime_ns, st.st_size, digest=digest,
                     uid=st.st_uid, gid=st.st_gid, flags=sparse | linked, xattrs=xattrs)

    def _symlink_entry(self, dfd: int, name: bytes, rel: bytes, st: os.stat_result) -> Entry | None:
        try:
            target = os.readlink(name, dir_fd=dfd)
        except OSError as err:
            self.on_skip(rel, f"symlink changed during the scan ({err.strerror})")
            return None
        return Entry(Kind.SYMLINK, rel, stat.S_IMODE(st.st_mode), st.st_mtime_ns, target=target,
                     uid=st.st_uid, gid=st.st_gid)

    def _unreadable(self, rel: bytes, st: os.stat_result, why: str) -> Entry:
        """A file announced without content: the destination keeps its own copy (if any) as it is. A file error:
        it should have been copied."""
        self.on_skip.error(rel, f"cannot be read at the source ({why}): {UNREADABLE}")
        return Entry(Kind.FILE, rel, stat.S_IMODE(st.st_mode), st.st_mtime_ns, uid=st.st_uid, gid=st.st_gid,
                     flags=F_UNREADABLE)

    def root_entry(self) -> Entry:
        st = os.fstat(self.root.fd)
        return Entry(Kind.DIR, b"", stat.S_IMODE(st.st_mode), st.st_mtime_ns, uid=st.st_uid, gid=st.st_gid,
                     xattrs=self._xattrs(self.root.fd, b".", b"") if self.xattrs else b"")

    def _xattrs(self, dfd: int, name: bytes, rel: bytes) -> bytes:
        """Extended attributes of ``name`` in ``dfd`` (never following a symlink), encoded for the wire.

        There is no *xattr(dir_fd=...) in Python; /proc/self/fd/N/name resolves through the held dir fd.
        """
        path = b"/proc/self/fd/%d/%s" % (dfd, name)
        try:
            attrs = []
            for key in sorted(os.listxattr(path, follow_symlinks=False)):
                bkey = os.fsencode(key)
                attrs.append((bkey, os.getxattr(path, bkey, follow_symlinks=False)))
        except OSError as err:
            if err.errno != errno.ENOTSUP:  # a filesystem without xattrs has none to lose
                self.on_skip(rel, f"extended attributes not replicated: cannot read them ({err.strerror})")
            return b""
        blob = encode_xattrs(attrs)
        if len(blob) > MAX_XATTRS:
            self.on_skip(rel, f"extended attributes not replicated: {len(blob)} bytes, more than the "
                              f"{MAX_XATTRS} an entry carries")
            return b""
        return blob

    def _digest(self, dfd: int, name: bytes) -> bytes:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(0, "not a regular file any more")
            return file_digest(fd, self._buf)
        finally:
            os.close(fd)


def _may(dfd: int, name: bytes, mode: int) -> bool:
    """Whether this process may open ``name`` in ``dfd`` for ``mode`` (its effective ids, ACLs and LSMs count)."""
    try:
        return os.access(name, mode, dir_fd=dfd, effective_ids=True, follow_symlinks=False)
    except OSError:
        return True  # vanished meanwhile, or an access check this kernel cannot make: opening will tell
