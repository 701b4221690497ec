"""The watcher's fallback for directories inotify cannot watch: compare their listings every few seconds.

Used when ``fs.inotify.max_user_watches`` runs out below the root (or the root cannot be watched at all):
each unwatched directory's entries are ``lstat`` signatures, and what changed between two polls is reported
to the watcher as ordinary created/changed/deleted items (``Polled``), scoped to those directories.
"""

from __future__ import annotations

import enum
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from zcrepl.agent.transfer.saferoot import TEMP_PREFIX, SafeRoot
from zcrepl.agent.watch_coalesce import is_ignored
from zcrepl.core.errors import UnsafePath
from zcrepl.core.paths import show

_V = TypeVar("_V")

__all__ = ["PollKind", "Polled", "Poller", "Sig", "list_signatures", "list_types", "missing"]

_WATCHES_SYSCTL = "/proc/sys/fs/inotify/max_user_watches"

Sig = tuple[int, int, int, int, int]  # (file type, ino, size, mtime_ns, ctime_ns)

LIST_AT = 16
"""Paths asked about in one directory from which :func:`missing` reads its listing rather than an lstat each."""


class PollKind(enum.Enum):
    CREATED = "created"
    CHANGED = "changed"
    DELETED = "deleted"
    RESCAN = "rescan"  # what changed before the poller's baseline was taken is unknown


@dataclass(frozen=True, slots=True)
class Polled:
    """A change found by the poller, or a request for a rescan."""

    kind: PollKind
    rel: bytes = b""
    is_dir: bool = False


def _listing(root: SafeRoot | None, rel: bytes, each: Callable[[int, os.DirEntry[str], bytes], _V | None],
             ) -> dict[bytes, _V] | None:
    """``each(dir fd, entry, name)`` for directory ``rel``'s entries minus our temp namespace, keyed by name (an
    entry whose ``each`` gives None, e.g. gone meanwhile, is left out); None if the directory is gone. ``each``
    runs while the directory fd is open: a DirEntry from an fd-based scandir stats relative to that fd."""
    if root is None or root.fd < 0:
        return None
    try:
        dfd = root.open_dir(rel.split(b"/") if rel else ())
    except (OSError, UnsafePath):
        return None
    try:
        out: dict[bytes, _V] = {}
        with os.scandir(dfd) as it:
            for de in it:
                name = os.fsencode(de.name)  # an fd gives str names: fsencode restores the exact bytes
                if not name.startswith(TEMP_PREFIX):
                    value = each(dfd, de, name)
                    if value is not None:
                        out[name] = value
        return out
    except OSError:
        return None
    finally:
        os.close(dfd)


def list_signatures(root: SafeRoot | None, rel: bytes) -> dict[bytes, Sig] | None:
    """``lstat`` signatures of directory ``rel``'s entries (never through a symlink), minus our temp
    namespace; None if it is gone."""
    def sig(dfd: int, _de: os.DirEntry[str], name: bytes) -> Sig | None:
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except OSError:
            return None  # gone meanwhile
        return (stat.S_IFMT(st.st_mode), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    return _listing(root, rel, sig)


def list_types(root: SafeRoot | None, rel: bytes) -> dict[bytes, int] | None:
    """The file type (``S_IFDIR``, ``S_IFREG``, ...) of each of directory ``rel``'s entries,
    minus our temp namespace; None if it is gone. From the directory's own entries (``d_type``), so a scan of a
    new directory costs no lstat per file where the file system records types (ext4, xfs, tmpfs do)."""
    def kind(_dfd: int, de: os.DirEntry[str], _name: bytes) -> int | None:
        try:  # d_type, or (DT_UNKNOWN) an lstat relative to the directory fd, which is still open here
            return (stat.S_IFDIR if de.is_dir(follow_symlinks=False) else
                    stat.S_IFREG if de.is_file(follow_symlinks=False) else
                    stat.S_IFMT(de.stat(follow_symlinks=False).st_mode))
        except OSError:
            return None  # gone meanwhile

    return _listing(root, rel, kind)


def missing(root: SafeRoot | None, rels: list[bytes]) -> set[bytes]:
    """Which of ``rels`` do not exist (now, or as far as can be told: unreadable counts as missing). Where many
    share a directory (a burst's files) its listing is read once instead of an lstat each, which SafeRoot makes
    three system calls."""
    by_parent: dict[bytes, list[bytes]] = {}
    for rel in rels:
        by_parent.setdefault(rel.rpartition(b"/")[0], []).append(rel)
    gone: set[bytes] = set()
    for parent, children in by_parent.items():
        names = _names(root, parent) if len(children) >= LIST_AT else None
        if names is None:
            gone.update(rel for rel in children if _lstat(root, rel) is None)
        else:
            gone.update(rel for rel in children if rel.rpartition(b"/")[2] not in names)
    return gone


def _names(root: SafeRoot | None, rel: bytes) -> set[bytes] | None:
    """The names in directory ``rel``: empty when it is gone, None when it cannot be listed."""
    if root is None or root.fd < 0:
        return None
    try:
        dfd = root.open_dir(rel.split(b"/") if rel else ())
    except (FileNotFoundError, NotADirectoryError):
        return set()
    except (OSError, UnsafePath):
        return None
    try:
        return {os.fsencode(name) for name in os.listdir(dfd)}  # an fd gives str names
    except OSError:
        return None
    finally:
        os.close(dfd)


def _lstat(root: SafeRoot | None, rel: bytes) -> os.stat_result | None:
    if root is None or root.fd < 0:
        return None
    try:
        return root.lstat(rel.split(b"/") if rel else ())
    except (OSError, UnsafePath):
        return None


class Poller:
    """Runs on its own thread (``run``); ``add`` queues a directory the watcher could not watch."""

    def __init__(self, root: bytes, saferoot: Callable[[], SafeRoot | None], rel: Callable[[bytes], bytes | None],
                 emit: Callable[[Polled], None], warn: Callable[[str], None], clock: Callable[[], float],
                 poll_interval: float) -> None:
        self.root = root
        self.poll_interval = poll_interval
        self._saferoot = saferoot
        self._rel = rel
        self._emit = emit
        self._warn = warn
        self._clock = clock
        self._cond = threading.Condition()  # guards _unwatched, _stopping
        self._stopping = False
        self._unwatched: list[tuple[bytes, bool, bool]] = []  # (absolute dir, its subdirectories too, warned)
        self._snaps: dict[bytes, dict[bytes, Sig]] = {}  # poller thread only: rel dir -> name -> Sig

    def add(self, path: bytes, recursive: bool, warned: bool) -> None:
        """Poll ``path`` (absolute) from now on; ``warned``: the caller already told the operator why."""
        with self._cond:
            self._unwatched.append((path, recursive, warned))
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def _list(self, rel: bytes) -> dict[bytes, Sig] | None:
        return list_signatures(self._saferoot(), rel)

    def run(self) -> None:
        next_poll: float | None = None
        warned_at: float | None = None
        while True:
            with self._cond:
                while not self._stopping and not self._unwatched:
                    now = self._clock()
                    if next_poll is not None and now >= next_poll:
                        break
                    self._cond.wait(None if next_poll is None else next_poll - now)
                if self._stopping:
                    return
                fresh, self._unwatched = self._unwatched, []
            if fresh:
                added = self._baseline([(p, r) for p, r, _ in fresh])
                if added:
                    now = self._clock()
                    limit_hit = not all(warned for _, _, warned in fresh)
                    if limit_hit and (warned_at is None or now - warned_at >= self.poll_interval):
                        warned_at = now
                        self._warn_limit(added)
                    self._emit(Polled(PollKind.RESCAN))  # what changed before the baseline was taken
                    if next_poll is None:
                        next_poll = self._clock() + self.poll_interval
            if next_poll is not None and self._clock() >= next_poll:
                self._poll_once()
                next_poll = self._clock() + self.poll_interval

    def _baseline(self, fresh: list[tuple[bytes, bool]]) -> list[bytes]:
        added: list[bytes] = []
        for path, recursive in fresh:
            rel = self._rel(path)
            if rel is None or is_ignored(rel):
                continue
            todo = [rel]
            while todo:
                d = todo.pop()
                if d in self._snaps:
                    continue
                entries = self._list(d)
                if entries is None:
                    continue
                self._snaps[d] = entries
                added.append(d)
                if recursive:
                    todo.extend(d + b"/" + n if d else n for n, s in self._snaps[d].items() if stat.S_ISDIR(s[0]))
        return added

    def _poll_once(self) -> None:
        for d in sorted(self._snaps):
            old = self._snaps.get(d)
            if old is None:
                continue
            entries = self._list(d)
            if entries is None:  # gone: its parent's watch (or poll) reports the removal
                self._forget(d)
                continue
            new = entries
            self._snaps[d] = new
            for name in sorted(old.keys() | new.keys()):
                before, after = old.get(name), new.get(name)
                if before == after:
                    continue
                child = d + b"/" + name if d else name
                if before is not None and (after is None or before[:2] != after[:2]):  # gone, or replaced
                    self._emit(Polled(PollKind.DELETED, child, stat.S_ISDIR(before[0])))
                    self._forget(child)
                    before = None
                if after is None:
                    continue
                is_dir = stat.S_ISDIR(after[0])
                self._emit(Polled(PollKind.CREATED if before is None else PollKind.CHANGED, child, is_dir))
                if is_dir and before is None:  # inotify never saw it appear: it is ours to poll
                    self._baseline([(self.root + b"/" + child, True)])

    def _forget(self, top: bytes) -> None:
        prefix = top + b"/"
        for d in [d for d in self._snaps if d == top or d.startswith(prefix)]:
            del self._snaps[d]

    def _warn_limit(self, dirs: list[bytes]) -> None:
        try:
            with open(_WATCHES_SYSCTL) as f:
                limit = f.read().strip()
        except OSError:
            limit = "unknown"
        first = show(dirs[0]) or "."
        n = len(dirs)
        self._warn(
            f"inotify watch limit reached under {show(self.root)}: {n} director{'y' if n == 1 else 'ies'} "
            f"(first: {first}) cannot be watched and are compared by scandir every {self.poll_interval:g}s "
            f"instead. Raise fs.inotify.max_user_watches (now {limit}): "
            "`sysctl -w fs.inotify.max_user_watches=1048576`, persisted with a line "
            "`fs.inotify.max_user_watches=1048576` in /etc/sysctl.d/90-zcrepl.conf; then restart the sync "
            "to watch everything again."
        )
