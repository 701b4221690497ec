"""What this agent wrote itself, as the destination of another rule, and must not ship back (see
:meth:`zcrepl.agent.watch.TreeWatcher.note_applied`)."""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

from zcrepl.agent.watch_coalesce import ChangeSet


@dataclass(slots=True)
class _Echo:
    ino: int
    mtime_ns: int
    size: int
    expires: float
    seen: tuple[int, int, int, int] | None = None  # (mode, uid, gid, ctime_ns) when first suppressed


class Echoes:
    """Notes of our own writes, each dropped from the upserts while ``lstat`` still shows what we wrote.

    Thread-safe: notes come from the receiving side, drops happen on the watcher's coalescing thread.
    """

    def __init__(self, ttl: float, clock: Callable[[], float],
                 lstat: Callable[[bytes], os.stat_result | None]) -> None:
        self._ttl = ttl
        self._clock = clock
        self._lstat = lstat
        self._lock = threading.Lock()
        self._notes: dict[bytes, _Echo] = {}
        self._purged = 0.0

    def note(self, rel: bytes, ino: int, mtime_ns: int, size: int) -> None:
        with self._lock:
            self._notes[rel] = _Echo(ino, mtime_ns, size, self._clock() + self._ttl)

    def drop(self, cs: ChangeSet) -> ChangeSet:
        """``cs`` without the upserts that are our own writes, unchanged since."""
        with self._lock:
            if not self._notes:
                return cs
            now = self._clock()
            if now - self._purged > self._ttl / 2:
                self._purged = now
                for rel in [r for r, e in self._notes.items() if e.expires < now]:
                    del self._notes[rel]
            drop = {rel for rel in cs.upserts if rel in self._notes and self._is_echo(rel, now)}
        return dataclasses.replace(cs, upserts=cs.upserts - drop) if drop else cs

    def _is_echo(self, rel: bytes, now: float) -> bool:
        note = self._notes[rel]
        st = self._lstat(rel) if note.expires >= now else None
        if st is None or (st.st_ino, st.st_mtime_ns, st.st_size) != (note.ino, note.mtime_ns, note.size):
            del self._notes[rel]
            return False
        seen = (st.st_mode, st.st_uid, st.st_gid, st.st_ctime_ns)
        if note.seen is None:
            note.seen = seen
        elif note.seen != seen:
            del self._notes[rel]
            return False
        return True
