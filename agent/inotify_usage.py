"""How many inotify watches this agent's user holds, against the kernel's per-user limit.

``fs.inotify.max_user_watches`` is charged per user (the effective uid of the process that adds a watch),
not per process: a desktop indexer, an IDE or another replication tool running as the same user eats the
same budget the agent's watcher needs. So the count covers every process of the agent's effective uid, not
just the agent: that is the figure that says whether a new watch will fit.

The kernel exposes no per-user counter. Each inotify fd lists its watches in ``/proc/PID/fdinfo/FD``, one
``inotify wd:...`` line each; finding those fds means a readlink of every fd of every process of the user,
which is thousands of syscalls on a busy host (root owns most processes). :class:`InotifyUsage` therefore
recounts at most every ``every`` seconds and serves the cached figure in between; watch counts change
slowly (a new tree being watched), and the controller only needs the headroom to be roughly right.

Processes we may not inspect (another user's, or made non-dumpable) are skipped: they do not count against
our uid unless they run as it, in which case /proc lets us read them.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

MAX_USER_WATCHES = "/proc/sys/fs/inotify/max_user_watches"
_INOTIFY_LINK = "anon_inode:inotify"


def max_user_watches(path: str = MAX_USER_WATCHES) -> int:
    """The kernel's per-user watch limit, or 0 when unknown (no inotify, no /proc)."""
    try:
        with open(path, "rb") as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def watches_of_user(uid: int, proc: str = "/proc") -> int:
    """Inotify watches held by all processes whose effective uid (their /proc directory's owner) is ``uid``."""
    total = 0
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return 0
    for pid in pids:
        base = f"{proc}/{pid}"
        try:
            if os.stat(base).st_uid != uid:
                continue
            fds = os.listdir(f"{base}/fd")
        except OSError:  # exited meanwhile, or not ours to read
            continue
        for fd in fds:
            try:
                if os.readlink(f"{base}/fd/{fd}") != _INOTIFY_LINK:
                    continue
                with open(f"{base}/fdinfo/{fd}", "rb") as f:
                    total += sum(1 for line in f if line.startswith(b"inotify wd:"))
            except OSError:
                continue
    return total


class InotifyUsage:
    """(watches in use by this user, the per-user limit), recounted at most every ``every`` seconds."""

    def __init__(self, every: float = 30.0, *, uid: int | None = None, proc: str = "/proc",
                 limit_path: str = MAX_USER_WATCHES, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self._uid = os.geteuid() if uid is None else uid
        self._proc = proc
        self._limit_path = limit_path
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._at: float | None = None
        self._value = (0, 0)

    def read(self) -> tuple[int, int]:
        with self._lock:
            now = self._monotonic()
            if self._at is None or now - self._at >= self.every:
                self._value = (watches_of_user(self._uid, self._proc), max_user_watches(self._limit_path))
                self._at = now
            return self._value
