"""Confined, symlink-safe file operations under one export root (DESIGN §3, reliability §1a, §1b, §2).

Every path handled here is ``bytes`` and relative to a directory fd that was itself opened under
confinement, so any name Linux allows (spaces, newlines, non-UTF-8) survives, and nothing outside the root
is touched even while a local attacker swaps directories for symlinks. Peer names are validated, never
normalised.

Gotchas:

- ``SafeRoot.open_dir`` refuses *every* symlink in the path, including ones that stay inside the root.
- ``AtomicFile(size=n)`` uses ``posix_fallocate``, which also sets the temp's ``st_size`` to ``n``: write
  the whole file or discard it; never infer progress from the temp's length.
- Metadata is set on open fds and renames stay inside one directory fd, so a parent swapped mid-operation
  can at worst make the operation land in (or fail in) the directory that was opened, never elsewhere.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import stat
from collections.abc import Sequence
from types import TracebackType

from zcrepl.agent.transfer.tempnames import (
    MAX_NAME,
    TEMP_PREFIX,
    process_start,
    temp_name,
    writer_gone,
    writer_token,
)
from zcrepl.core.errors import UnsafePath
from zcrepl.core.paths import show

__all__ = [
    "MAX_DEPTH",
    "MAX_NAME",
    "MAX_PATH",
    "RESOLVE_BENEATH",
    "RESOLVE_NO_MAGICLINKS",
    "RESOLVE_NO_SYMLINKS",
    "RESOLVE_NO_XDEV",
    "TEMP_PREFIX",
    "SafeRoot",
    "openat2",
    "process_start",
    "show",
    "temp_name",
    "validate_name",
    "validate_relpath",
    "writer_gone",
    "writer_token",
]

MAX_PATH = 65535
"""Bytes of a path below a root: what a manifest entry can carry (a u16 on the wire), 16 times PATH_MAX.

Linux puts no limit on depth: PATH_MAX (4096) bounds only what one syscall resolves, and every operation
here goes through directory fds, opening long paths a piece of at most ``_CHUNK`` bytes at a time. Deeper
entries are skipped by the scanner, and reported."""
MAX_DEPTH = (MAX_PATH + 1) // 2
"""Implied by ``MAX_PATH`` (every level costs a name and a slash), not a limit of its own."""
_CHUNK = 4000  # bytes of path per openat2 call: under PATH_MAX (4096 with its NUL) with room to spare

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
_CONFINED = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_EAGAIN_RETRIES = 8

# 437 comes from the unified asm-generic table; only the architectures the reference verified claim it.
# Anything else gets ENOSYS, which sends SafeRoot to the fallback walk.
_SYS_OPENAT2 = 437 if platform.machine().lower() in {"x86_64", "amd64", "aarch64", "arm64"} else None
# A private CDLL instance, so setting restype here cannot disturb other ctypes users of libc.syscall.
_syscall = ctypes.CDLL(None, use_errno=True).syscall
_syscall.restype = ctypes.c_long


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


# ------------------------------------------------------------------------------------------------ names

def _name_problem(name: bytes) -> str | None:
    if not name:
        return "empty path component"
    if name in (b".", b".."):
        return "'.' or '..' path component"
    if b"/" in name:
        return "'/' inside a path component"
    if b"\0" in name:
        return "NUL byte in a path component"
    if len(name) > MAX_NAME:
        return f"path component longer than {MAX_NAME} bytes ({len(name)})"
    if name.startswith(TEMP_PREFIX):
        return f"name collides with the agent's temp namespace {show(TEMP_PREFIX)}*"
    return None


def validate_name(name: bytes) -> bytes:
    """Return ``name`` if it is one safe path component, else raise :class:`UnsafePath`.

    Refused: empty, ``.``, ``..``, containing ``/`` or NUL, longer than ``MAX_NAME`` bytes, or starting
    with ``TEMP_PREFIX`` (else a peer could plant a fake temp, e.g. a symlink we would write through).
    Control characters and non-UTF-8 bytes are legal and kept; print names only through :func:`show`.
    """
    if not isinstance(name, bytes):
        raise TypeError(f"path component must be bytes, not {type(name).__name__}")
    reason = _name_problem(name)
    if reason is not None:
        raise UnsafePath(f'refusing name "{show(name)}": {reason}; rename it on the source')
    return name


def validate_relpath(rel: bytes) -> tuple[bytes, ...]:
    """Split a root-relative path into validated components; ``b""`` (the root itself) gives ``()``.

    Rejects, never normalises: a leading ``/``, ``//``, a trailing ``/``, ``.`` and ``..`` all raise
    :class:`UnsafePath`, as do paths longer than ``MAX_PATH`` bytes or deeper than ``MAX_DEPTH``.
    """
    if not isinstance(rel, bytes):
        raise TypeError(f"path must be bytes, not {type(rel).__name__}")
    if rel == b"":
        return ()
    if len(rel) > MAX_PATH:
        raise UnsafePath(f'refusing path "{show(rel[:64])}...": longer than {MAX_PATH} bytes ({len(rel)})')
    parts = tuple(rel.split(b"/"))
    if len(parts) > MAX_DEPTH:
        raise UnsafePath(f'refusing path "{show(rel[:64])}...": more than {MAX_DEPTH} levels ({len(parts)})')
    for part in parts:
        reason = _name_problem(part)
        if reason is not None:
            raise UnsafePath(f'refusing path "{show(rel)}": {reason}; rename it on the source')
    return parts


def _check_parts(parts: Sequence[bytes]) -> tuple[bytes, ...]:
    parts = tuple(parts)
    if len(parts) > MAX_DEPTH:
        raise UnsafePath(f"refusing a path of {len(parts)} components: more than {MAX_DEPTH} levels")
    for part in parts:
        validate_name(part)
    if sum(map(len, parts)) + len(parts) - 1 > MAX_PATH:
        raise UnsafePath(f'refusing path "{show(b"/".join(parts)[:64])}...": longer than {MAX_PATH} bytes')
    return parts


# ------------------------------------------------------------------------------------------------ openat2


def openat2(
    dirfd: int,
    path: bytes,
    flags: int,
    mode: int = 0,
    resolve: int = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS,
) -> int:
    """Call Linux ``openat2(2)`` (syscall 437) through ctypes and return the new fd; adds ``O_CLOEXEC``.

    Raises :class:`OSError` (the errno-specific subclass): ``ENOSYS`` where the kernel or architecture
    lacks it, ``EPERM`` or ``ENOSYS`` under some seccomp sandboxes, ``EXDEV`` for an escape under
    ``RESOLVE_BENEATH``, ``ELOOP`` for a symlink under ``RESOLVE_NO_SYMLINKS``. ``EINTR`` and ``EAGAIN``
    (the kernel's answer to a concurrent rename while resolving ``..``) are retried a few times.
    """
    if b"\0" in path:
        raise ValueError("embedded null byte")
    if _SYS_OPENAT2 is None:
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS), path)
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    attempts = 0
    while True:
        fd = _syscall(
            ctypes.c_long(_SYS_OPENAT2),
            ctypes.c_int(dirfd),
            ctypes.c_char_p(path),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        attempts += 1
        if err == errno.EINTR or (err == errno.EAGAIN and attempts < _EAGAIN_RETRIES):
            continue
        raise OSError(err, os.strerror(err), path)


# ------------------------------------------------------------------------------------------------ SafeRoot


class SafeRoot:
    """A directory opened once; every operation is relative to held dir fds, never by absolute path.

    ``path`` is kept for messages only. The root itself may be reached through a symlink (operator
    config); nothing below it is. Methods only read the shared root fd, so threads may share one instance.

    ``use_openat2=False`` always takes the per-component ``O_NOFOLLOW`` walk, the path a kernel without openat2
    (or a seccomp filter refusing it) takes anyway: tests pass it to exercise that path on any kernel.
    """

    fd: int
    path: bytes
    use_openat2: bool

    def __init__(self, path: bytes, *, use_openat2: bool = True) -> None:
        if not isinstance(path, bytes):
            raise TypeError(f"root path must be bytes, not {type(path).__name__}")
        self.path = path
        self.use_openat2 = use_openat2
        self.fd = os.open(path, _DIR_FLAGS)

    @classmethod
    def from_fd(cls, fd: int, path: bytes, *, use_openat2: bool = True) -> SafeRoot:
        """Adopt an already confined directory fd (e.g. from ``open_dir``) as a root; takes ownership."""
        root = cls.__new__(cls)
        root.path = path
        root.use_openat2 = use_openat2
        root.fd = fd
        return root

    def close(self) -> None:
        """Close the root fd; idempotent."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> SafeRoot:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SafeRoot({show(self.path)!r}, fd={self.fd})"

    def open_dir(self, parts: Sequence[bytes], *, create: bool = False, mode: int = 0o700) -> int:
        """Return a NEW fd (caller closes) of directory ``root/parts...``; no symlink anywhere is followed.

        ``create=True`` makes missing components one at a time (``mode``, minus umask). Raises
        :class:`UnsafePath` for an invalid name or a symlink component, :class:`FileNotFoundError` for a
        missing one (without ``create``), :class:`NotADirectoryError` for a non-directory component.
        """
        parts = _check_parts(parts)
        if not parts:
            return os.dup(self.fd)
        return self._open_below(self.fd, (), parts, create, mode)

    def open_below(self, base_fd: int, base: Sequence[bytes], parts: Sequence[bytes]) -> int:
        """Like :meth:`open_dir` for ``base + parts``, starting from ``base_fd``: a directory fd this root
        handed out for ``base`` (checked then; only ``parts`` is checked here). The scanner keeps a few such
        fds on its current path, so a deep walk does not resolve the whole path again for every directory."""
        parts = _check_parts(parts)
        if not parts:
            return os.dup(base_fd)
        return self._open_below(base_fd, tuple(base), parts, False, 0o700)

    def open_child(self, parent_fd: int, name: bytes, rel: bytes) -> int:
        """The directory ``name`` in ``parent_fd`` (a directory fd this root handed out), never through a
        symlink; ``rel`` (its path below the root) is for messages. Errors as :meth:`open_dir`."""
        validate_name(name)
        return self._step(parent_fd, name, (rel,), False, 0)

    def _open_below(self, base_fd: int, base: tuple[bytes, ...], parts: tuple[bytes, ...], create: bool,
                    mode: int) -> int:
        if self.use_openat2:
            fd = base_fd
            try:
                # A path longer than PATH_MAX cannot go to one call: open it a chunk at a time, each chunk
                # confined beneath the directory the previous one opened.
                for chunk in _chunks(parts):
                    nfd = openat2(fd, b"/".join(chunk), _DIR_FLAGS, resolve=_CONFINED)
                    if fd != base_fd:
                        os.close(fd)
                    fd = nfd
                return fd
            except OSError as err:
                if fd != base_fd:
                    os.close(fd)
                rel = b"/".join((*base, *parts))
                if err.errno in (errno.ELOOP, errno.EXDEV):
                    raise self._unsafe(rel, "a symlink is in the way") from err
                fall_back = err.errno in (errno.ENOSYS, errno.EPERM)  # seccomp or an old kernel
                if not fall_back and not (err.errno == errno.ENOENT and create):
                    if err.errno in (errno.ENOENT, errno.ENOTDIR, errno.EACCES):
                        raise OSError(err.errno, err.strerror, rel) from err
                    raise
        return self._walk(parts, create, mode, base_fd, base)

    def open_parent(
        self, parts: Sequence[bytes], *, create: bool = False, mode: int = 0o700
    ) -> tuple[int, bytes]:
        """Return ``(new fd of the parent dir, leaf name)`` as :meth:`open_dir` does; ``parts`` non-empty."""
        parts = _check_parts(parts)
        if not parts:
            raise UnsafePath(f'refusing the root "{show(self.path)}" as an entry: it has no parent here')
        return self.open_dir(parts[:-1], create=create, mode=mode), parts[-1]

    def open_read(self, parts: Sequence[bytes]) -> int:
        """Open the regular file ``root/parts...`` for reading; return the fd (caller closes).

        ``O_NONBLOCK`` keeps a FIFO from blocking the open; ``fstat`` on the fd then refuses anything not
        ``S_ISREG`` with :class:`UnsafePath`, as is a symlink leaf. Take the size from ``os.fstat(fd)``.
        Opening a device node may have driver side effects: only ask for what the scanner saw as regular.
        """
        pfd, leaf = self.open_parent(parts)
        try:
            return self.open_read_at(pfd, leaf, b"/".join(parts))[0]
        finally:
            os.close(pfd)

    def open_read_at(self, dfd: int, leaf: bytes, rel: bytes) -> tuple[int, os.stat_result]:
        """(fd, its fstat) of the regular file ``leaf`` in the directory ``dfd`` (a confined fd of this root;
        ``rel`` names it in messages), refused as :meth:`open_read` refuses; the caller closes the fd."""
        try:
            fd = os.open(leaf, _READ_FLAGS, dir_fd=dfd)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise self._unsafe(rel, "it is a symlink (sent as a link, never read)") from err
            if err.errno == errno.ENXIO:  # a socket, or a device without a driver
                raise self._unsafe(rel, "not a regular file") from err
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise self._unsafe(rel, f"not a regular file but a {_kind(st.st_mode)}")
        except BaseException:
            os.close(fd)
            raise
        return fd, st

    def lstat(self, parts: Sequence[bytes]) -> os.stat_result | None:
        """``lstat`` of ``root/parts...`` (of the root for ``()``); None when it or a parent is absent.

        A non-directory parent also gives None (nothing can exist below it); a symlink parent raises
        :class:`UnsafePath`.
        """
        parts = _check_parts(parts)
        if not parts:
            return os.fstat(self.fd)
        try:
            pfd, leaf = self.open_parent(parts)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            return os.stat(leaf, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        finally:
            os.close(pfd)

    def _walk(self, parts: tuple[bytes, ...], create: bool, mode: int, base_fd: int | None = None,
              base: tuple[bytes, ...] = ()) -> int:
        # Each step opens ONE name relative to an fd already checked, with O_NOFOLLOW, so a component swapped
        # for a symlink at any moment is refused rather than followed, and the fds held keep pointing at the
        # directories that were checked even if those are renamed away meanwhile. Two fds at a time, at any depth.
        fd = os.dup(self.fd if base_fd is None else base_fd)
        try:
            for depth, name in enumerate(parts, 1):
                child = self._step(fd, name, (*base, *parts[:depth]), create, mode)
                fd, old = child, fd
                os.close(old)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _step(self, parent: int, name: bytes, prefix: tuple[bytes, ...], create: bool, mode: int) -> int:
        try:
            try:
                return os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=parent)
            except FileNotFoundError:
                if not create:
                    raise
            # EEXIST means another creator won the race, or an entry was planted: the O_NOFOLLOW open decides.
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, mode, dir_fd=parent)
            return os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=parent)
        except OSError as err:
            rel = b"/".join(prefix)
            # O_NOFOLLOW|O_DIRECTORY reports a symlink as ENOTDIR, hence the lstat to tell them apart.
            if err.errno == errno.ELOOP or (err.errno == errno.ENOTDIR and _is_symlink(parent, name)):
                raise self._unsafe(rel, "a symlink is in the way") from err
            if err.errno in (errno.ENOENT, errno.ENOTDIR):
                raise OSError(err.errno, err.strerror, rel) from err
            raise

    def _unsafe(self, rel: bytes, why: str) -> UnsafePath:
        return UnsafePath(
            f'refusing "{show(rel)}" under root "{show(self.path)}": {why}; '
            "remove or replace it on this host if it is not an attack"
        )


def _chunks(parts: tuple[bytes, ...]) -> list[tuple[bytes, ...]]:
    """``parts`` cut into runs whose joined length is at most ``_CHUNK`` bytes (a name is at most 255)."""
    out: list[tuple[bytes, ...]] = []
    start, size = 0, -1
    for i, name in enumerate(parts):
        if size + 1 + len(name) > _CHUNK:
            out.append(parts[start:i])
            start, size = i, -1
        size += 1 + len(name)
    out.append(parts[start:])
    return out


def lstat_at(dir_fd: int, leaf: bytes) -> os.stat_result | None:
    """What ``leaf`` in the directory ``dir_fd`` is, never following a symlink; None when nothing is there."""
    try:
        return os.lstat(leaf, dir_fd=dir_fd)
    except FileNotFoundError:
        return None


def _is_symlink(dir_fd: int, name: bytes) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _kind(st_mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "directory"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    )
    return next((kind for test, kind in kinds if test(st_mode)), f"mode {st_mode:o}")
