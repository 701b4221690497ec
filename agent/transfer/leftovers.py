"""What dead transfers leave at a destination, and its removal.

- Temp files ``.zc.<leaf>.<random>.<writer>.tmp`` (saferoot.temp_name): the name says which process wrote it.
  One whose writer is gone is removed: written in an earlier boot, or in this boot and this pid namespace by a
  pid that no longer runs or now belongs to a process started at another time. A temp of another pid namespace
  (an agent in another container sharing the directory) or without a writer (older agents) is left alone.
- The partial area ``.zc.partial/`` (partial.py): its entries older than ``max_age`` go, then the oldest until
  it holds at most ``max_bytes`` (0: a tenth of its filesystem).

:class:`Sweeper` does both for a destination directory when a job or watch session starts there, before it writes
(at most once per ``interval`` per directory), and at start-up, in the background, for each export's recent
destinations, which it keeps in ``recent-destinations.json`` in the agent's state_dir (the most recent 256 per
export, with when they were last used).
Removing debris keeps the mtime of the directory it was in: directory mtimes are replicated data.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass

from zcrepl.agent.transfer.partial import PartialArea
from zcrepl.agent.transfer.saferoot import MAX_DEPTH, TEMP_PREFIX, SafeRoot, writer_gone
from zcrepl.core.errors import UnsafePath
from zcrepl.core.logs import kv
from zcrepl.core.paths import show

log = logging.getLogger(__name__)

MAX_DESTS = 256
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class Swept:
    temps: int = 0
    temp_bytes: int = 0
    partials: int = 0
    partial_bytes: int = 0

    def __bool__(self) -> bool:
        return bool(self.temps or self.partials)


def sweep_temps(dir_fd: int, stop: threading.Event | None = None) -> Swept:
    """Remove the temps of gone writers in the tree below ``dir_fd`` (not followed through symlinks, not into
    the agent's own ``.zc.*`` directories)."""
    out = Swept()
    stack = [os.dup(dir_fd)]
    try:
        while stack and not (stop is not None and stop.is_set()):
            fd = stack.pop()
            removed = 0
            try:
                before = os.fstat(fd)
                with os.scandir(fd) as it:
                    entries = list(it)
                for de in entries:
                    name = os.fsencode(de.name)
                    with contextlib.suppress(OSError):
                        if name.startswith(TEMP_PREFIX):
                            if not de.is_dir(follow_symlinks=False) and writer_gone(name):
                                size = de.stat(follow_symlinks=False).st_size
                                os.unlink(name, dir_fd=fd)
                                removed += 1
                                out.temps, out.temp_bytes = out.temps + 1, out.temp_bytes + size
                        elif de.is_dir(follow_symlinks=False) and len(stack) < MAX_DEPTH:
                            stack.append(os.open(name, _DIR, dir_fd=fd))
                if removed:  # the directory's mtime is replicated data: removing our debris must not change it
                    os.utime(fd, ns=(before.st_atime_ns, before.st_mtime_ns))
            except OSError:
                pass
            finally:
                os.close(fd)
    finally:
        for fd in stack:
            os.close(fd)
    return out


def sweep_destination(export: SafeRoot, rel: tuple[bytes, ...], max_age: float, max_bytes: int,
                      stop: threading.Event | None = None) -> Swept:
    """Temps of gone writers below the destination, then its partial area by age and size."""
    try:
        fd = export.open_dir(rel)
    except (OSError, UnsafePath):
        return Swept()  # not there (yet), or not a directory we may enter: nothing of ours in it
    root = SafeRoot.from_fd(fd, export.path + b"".join(b"/" + p for p in rel))
    try:
        out = sweep_temps(root.fd, stop)
        out.partials, out.partial_bytes = PartialArea(root).sweep(max_age, max_bytes)
        return out
    finally:
        root.close()


class Sweeper:
    """Sweeps of destination directories (see the module's docstring), never while a session writes there."""

    def __init__(self, host: str, *, max_age: float, max_bytes: int, state_file: str = "",
                 interval: float = 60.0) -> None:
        self.host = host
        self.state_file = state_file  # where recent destinations are kept ("": nowhere)
        self.max_age = max_age
        self.max_bytes = max_bytes
        self.interval = interval
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._dirs: dict[tuple[bytes, tuple[bytes, ...]], tuple[threading.Lock, list[float]]] = {}
        self._threads: set[threading.Thread] = set()

    def request(self, export: SafeRoot, rel: tuple[bytes, ...]) -> None:
        """A job or watch session is about to write in ``rel``: note it as a recent destination and sweep it
        first (unless swept within ``interval``; a start-up sweep of it still running is waited for)."""
        if self._sweep(export, rel) and self.state_file:
            _note_dest(self.state_file, export.path, rel)

    def startup(self, exports: list[SafeRoot]) -> None:
        """Sweep every export's recent destinations (those listed in the state file), in the background."""
        recent = _read_dests(self.state_file) if self.state_file else {}
        work = [(export, _rel(key)) for export in exports for key in recent.get(export.path.hex(), {})]
        if not work:
            return
        t = threading.Thread(target=self._startup, args=(work,), name="zc-sweep", daemon=True)
        with self._lock:
            self._threads.add(t)
        t.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(timeout)

    def _startup(self, work: list[tuple[SafeRoot, tuple[bytes, ...]]]) -> None:
        try:
            for export, rel in work:
                if self._stop.is_set():
                    return
                self._sweep(export, rel)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _sweep(self, export: SafeRoot, rel: tuple[bytes, ...]) -> bool:
        """Sweep ``rel`` unless it was within ``interval``; False when skipped."""
        with self._lock:
            lock, last = self._dirs.setdefault((export.path, rel), (threading.Lock(), [-self.interval]))
        with lock:
            now = time.monotonic()
            if self._stop.is_set() or now - last[0] < self.interval:
                return False
            last[0] = now
            try:
                swept = sweep_destination(export, rel, self.max_age, self.max_bytes, self._stop)
            except Exception:  # housekeeping must never take a transfer or the agent down
                log.exception("sweep failed", extra=kv(path=show(export.path + b"".join(b"/" + p for p in rel))))
                return True
        if swept:
            log.info("left-overs removed", extra=kv(
                path=f"{self.host}:{show(export.path + b''.join(b'/' + p for p in rel))}", temps=swept.temps,
                temp_bytes=swept.temp_bytes, partials=swept.partials, partial_bytes=swept.partial_bytes))
        return True


_dests_lock = threading.Lock()


def _read_dests(state_file: str) -> dict[str, dict[str, float]]:
    """{export path (hex): {destination below it (hex, components joined by "/"): last used}}."""
    try:
        with open(state_file, "rb") as f:
            doc = json.loads(f.read(4 << 20))
        return {e: {r: float(t) for r, t in rels.items()} for e, rels in doc.items()} if isinstance(doc, dict) else {}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def _rel(key: str) -> tuple[bytes, ...]:
    raw = bytes.fromhex(key)
    return tuple(raw.split(b"/")) if raw else ()


def _note_dest(state_file: str, export: bytes, rel: tuple[bytes, ...]) -> None:
    """Record ``rel`` as ``export``'s most recent destination (the file replaced atomically, the oldest dropped)."""
    with _dests_lock:
        doc = _read_dests(state_file)
        rels = doc.setdefault(export.hex(), {})
        key = b"/".join(rel).hex()
        rels.pop(key, None)
        rels[key] = time.time()
        doc[export.hex()] = dict(list(rels.items())[-MAX_DESTS:])
        tmp = f"{state_file}.{os.getpid()}.tmp"
        try:
            os.makedirs(os.path.dirname(state_file) or ".", mode=0o700, exist_ok=True)
            with open(tmp, "w") as f:
                json.dump(doc, f)
            os.replace(tmp, state_file)
        except OSError as err:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            log.debug("recent destinations not recorded", extra=kv(file=state_file, error=err))
