"""Source-side change collector for continuous replication: watchdog (inotify) -> queue -> coalescer.

::

    kernel inotify -> WatchFD -> WatchEmitter -> observer thread -> inbox -> coalescer thread -> on_changes
                      (overflow and watch-limit hooks)                      ^
                                                        poller thread ------+  (directories inotify cannot watch)

``TreeWatcher`` is the I/O shell; every decision (merging, holding files still being written, rename chains,
the order a ``ChangeSet`` is applied in, :mod:`zcrepl.agent.watch_changeset`) lives in the pure
:class:`~zcrepl.agent.watch_coalesce.Coalescer`;
the poller for directories inotify cannot watch in :mod:`zcrepl.agent.watch_poll`.
The first set delivered after :meth:`TreeWatcher.start` is ``rescan=True`` (reconciliation at rule start).

What watchdog 7.1 does with the two ways inotify loses events, and what is done about it here:

- **Queue overflow** (``IN_Q_OVERFLOW``, ``fs.inotify.max_queued_events``): ``InotifyFD.handle_event`` logs
  a warning and calls ``on_queue_overflow`` on each watch group, which drops pending move halves and re-adds
  the recursive watches. Nothing reaches the event queue, so a handler never learns that events were lost.
  ``WatchFD.handle_event`` calls the watcher after watchdog's own recovery; the next set is ``rescan=True``.
- **Watch limit** (``ENOSPC`` from ``inotify_add_watch``, ``fs.inotify.max_user_watches``): ``InotifyFD``
  raises ``OSError(ENOSPC, "inotify watch limit reached")``; ``InotifyWatchGroup._add_callback`` re-raises it
  only for the watched root and silently swallows it for every directory below, which then goes unwatched
  for good. ``WatchFD.add_callback`` reports each such directory; the watcher calls ``on_warning`` (naming the
  sysctl and how to raise it; at most once per ``poll_interval``), delivers ``rescan=True`` and from then
  on compares those directories' listings every ``poll_interval`` seconds, delivering what changed as
  ordinary upserts and deletes (scoped to the unwatched directories, not a whole-tree rescan per poll;
  directories created inside them are polled too). A root that cannot be watched at all (``ENOSPC``, or
  ``EMFILE`` for ``fs.inotify.max_user_instances``) is polled whole.

Gotchas:

- Paths are bytes end to end: the watch is scheduled with a bytes path, so watchdog hands bytes back; a str
  (other emitters) goes through ``os.fsencode``.
- Watchdog's synthetic events (a moved directory's children, a moved-in or new directory's content) are never
  made: a directory rename stays ONE rename, and new directories are scanned here instead (confined,
  never following a symlink), which also catches what happened before watchdog's watch was in place.
- A rename out of the tree reaches us ~0.5 s late: watchdog holds an unpaired ``IN_MOVED_FROM`` that long
  waiting for its ``IN_MOVED_TO``, and everything queued behind it waits too.
- watchdog 7.1 also emits a ``RuntimeWarning`` from its reader thread each time a new directory tree appears
  (it re-adds a watch it holds); under warnings-as-errors that kills the thread, so ``WatchFD`` avoids it.
- ``on_changes`` must read the source for a set (ship it, or at least snapshot what it needs) before it
  returns: right after, the watcher checks which freshly shipped paths still exist, and it times its replay
  period from there (see :mod:`zcrepl.agent.watch_coalesce`).
- ``clock`` times the waits as well as the events: inject one that advances in real seconds.
- Changes still pending at :meth:`TreeWatcher.stop` are dropped; the next start reconciles anyway.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from watchdog.events import (
    EVENT_TYPE_ATTRIB,
    EVENT_TYPE_CLOSED,
    EVENT_TYPE_CREATED,
    EVENT_TYPE_DELETED,
    EVENT_TYPE_MODIFIED,
    EVENT_TYPE_MOVED,
)

from zcrepl.agent import watch_inotify as wi
from zcrepl.agent.transfer.saferoot import SafeRoot
from zcrepl.agent.watch_coalesce import REPLAY_MARGIN, ChangeSet, Coalescer, is_ignored
from zcrepl.agent.watch_inotify import EVENT_FILTER, JOIN_TIMEOUT, NO_HANDLER, Raw, WatchFD, WatchObserver
from zcrepl.agent.watch_poll import Polled, Poller, PollKind, list_types, missing
from zcrepl.core.errors import UnsafePath
from zcrepl.core.logs import carry, kv
from zcrepl.core.paths import show

__all__ = ["ChangeSet", "TreeWatcher"]

log = logging.getLogger(__name__)

ChangesFn = Callable[[ChangeSet], None]
WarnFn = Callable[[str], None]

BURST_EVENTS = 100
"""Events within one window that make a burst (100 in 50 ms: some 1,000 files a second, each created, written
and closed); see ``TreeWatcher._burst_hold``."""
BURST_HOLD = 1.0
"""The longest a burst holds back shipping, from its oldest pending change (seconds)."""

class TreeWatcher:
    """Watches ``root`` recursively and calls ``on_changes`` with coalesced :class:`ChangeSet` batches.

    ``on_changes`` runs on the watcher's coalescing thread, one set at a time, in order; while it runs, new
    events keep coalescing (a slow shipper sees bigger sets, and :meth:`lag` shows it). If it raises, the
    set is not retried: the next one is ``rescan=True``. ``window``: how long events are merged;
    ``quiet``: how long a file still being written must see no event before it is shipped (with
    ``close_settles`` a writer's close ends that wait at once); ``max_batch``: most items in one set;
    ``replay_margin``: how late events may arrive (see :data:`~zcrepl.agent.watch_coalesce.REPLAY_MARGIN`).
    While a burst goes on (``burst_events`` events within one window), nothing is released until the writer
    pauses for a window or the oldest pending change is ``burst_hold`` seconds old: the writer does not
    compete with the shipping of its own files.
    For that long after a reconciliation a rename is shipped as a delete plus an upsert of its content, and
    for that long after a path was shipped, renaming it also re-upserts it under the new name.
    """

    def __init__(
        self,
        root: bytes,
        *,
        window: float = 0.05,
        quiet: float = 0.2,
        max_batch: int = 10000,
        on_changes: ChangesFn,
        clock: Callable[[], float] = time.monotonic,
        poll_interval: float = 30.0,
        on_warning: WarnFn | None = None,
        close_settles: bool = True,
        max_pending: int = 1_000_000,
        replay_margin: float = REPLAY_MARGIN,
        burst_events: int = BURST_EVENTS,
        burst_hold: float = BURST_HOLD,
    ) -> None:
        if max_batch < 1 or poll_interval <= 0:
            raise ValueError("max_batch must be >= 1 and poll_interval > 0")
        self.root = os.path.realpath(os.fsencode(root))
        self.poll_interval = poll_interval
        self._window = window
        self._max_batch = max_batch
        self._on_changes = on_changes
        self._on_warning = on_warning or _log_warning
        self._clock = clock
        self._quiet = quiet
        self._burst_events = burst_events
        self._burst_hold_max = burst_hold
        self._recent: deque[tuple[float, int]] = deque()  # (stamp, events) of recent batches: burst detection
        self._co = Coalescer(window=window, quiet=quiet, close_settles=close_settles, max_pending=max_pending,
                             replay_margin=replay_margin)
        self._cond = threading.Condition()  # guards _co, _inbox, _stopping
        self._handlers: dict[str, Callable[[bytes, bool, float], Sequence[bytes]]] = {
            EVENT_TYPE_CREATED: self._on_created, EVENT_TYPE_MODIFIED: self._on_modified,
            EVENT_TYPE_CLOSED: self._on_closed, EVENT_TYPE_ATTRIB: self._on_attrib,
            EVENT_TYPE_DELETED: self._on_deleted, wi.CREATED_CLOSED: self._on_created_closed,
        }
        self._inbox: list[tuple[float, list[Raw] | Polled]] = []  # batches from the emitter, and polled changes
        self._stopping = False
        self._started = False
        # For metrics, guarded by _cond: file system events received, change sets released to the shipper.
        self.events_seen = 0
        self.sets_released = 0
        self._poller = Poller(self.root, lambda: self._saferoot, self._rel, self._on_event, self._on_warning,
                              clock, poll_interval)
        self._saferoot: SafeRoot | None = None
        self._observer: WatchObserver | None = None
        self._threads: list[threading.Thread] = []

    # ----------------------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Watch the tree; the first set delivered is ``rescan=True``. Raises OSError if root is unusable."""
        if self._started:
            raise RuntimeError("a TreeWatcher starts once")
        self._started = True
        self._saferoot = SafeRoot(self.root)
        try:
            self._start_observer()
            with self._cond:
                # After the watches exist: a reconciliation from here on misses nothing.
                self._co.request_rescan(self._clock())
            for name, target in (("coalesce", self._run), ("poll", self._poller.run)):
                t = threading.Thread(target=carry(target), name=f"zc-watch-{name}", daemon=True)
                t.start()
                self._threads.append(t)
        except BaseException:
            self.stop()
            raise
        log.info("watching", extra=kv(root=self.root))

    def stop(self) -> None:
        """Stop watching and join every thread (about a second at most); idempotent. An ``on_changes`` call
        in progress is not interrupted: its thread is left to finish it (it is a daemon thread)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._poller.stop()
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            with contextlib.suppress(RuntimeError):
                observer.join(JOIN_TIMEOUT)
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(JOIN_TIMEOUT)
        self._threads.clear()
        if self._saferoot is not None:
            self._saferoot.close()

    def __enter__(self) -> TreeWatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------------------------------- queries

    def pending(self) -> int:
        """Changes seen but not yet handed to ``on_changes`` (including a pending rescan)."""
        with self._cond:
            return self._co.pending() + len(self._inbox)

    def lag(self) -> float:
        """Age in seconds of the oldest change not yet handed to ``on_changes``; 0.0 when none."""
        with self._cond:
            oldest = self._co.oldest()
            if self._inbox:
                first = self._inbox[0][0]
                oldest = first if oldest is None else min(oldest, first)
        return 0.0 if oldest is None else max(0.0, self._clock() - oldest)

    # ----------------------------------------------------------------------------------------- watchdog side

    def _start_observer(self) -> None:
        try:
            # merge: a quarter of quiet, so a file written non-stop is still held at least 3/4 of it after its
            # last write; pace: a tenth of the window, which merges a burst anyway (see WatchFD).
            fd = WatchFD(self._overflowed, self._limit_hit, merge=self._quiet / 4, pace=min(0.005, self._window / 10))
        except OSError as err:
            if err.errno != errno.EMFILE:
                raise
            self._fall_back(f"inotify instance limit reached ({err}); raise fs.inotify.max_user_instances "
                            "(e.g. sysctl -w fs.inotify.max_user_instances=1024)")
            return
        fd.start()
        observer = WatchObserver(fd, self._on_batch)
        # A bytes path makes watchdog hand back bytes paths (typed str | Path, works with bytes).
        observer.schedule(NO_HANDLER, self.root,  # type: ignore[arg-type]
                          recursive=True, event_filter=EVENT_FILTER)
        try:
            observer.start()
        except OSError as err:
            observer.stop()  # stops and joins the WatchFD thread
            if err.errno != errno.ENOSPC:
                raise
            return  # _limit_hit already queued the root for polling
        self._observer = observer

    def _fall_back(self, why: str) -> None:
        self._on_warning(f"cannot watch {show(self.root)} with inotify: {why}; polling the whole tree every "
                         f"{self.poll_interval:g}s instead")
        self._poller.add(self.root, True, True)

    def _on_event(self, event: Polled) -> None:
        with self._cond:
            self._inbox.append((self._clock(), event))
            self.events_seen += 1
            self._cond.notify()

    def _on_batch(self, events: list[Raw]) -> None:
        # One stamp, one lock and one wake-up for everything the emitter had ready.
        with self._cond:
            self._inbox.append((self._clock(), events))
            self.events_seen += len(events)
            self._cond.notify()

    def _overflowed(self) -> None:
        log.warning("inotify queue overflowed; a rescan follows", extra=kv(root=self.root))
        with self._cond:
            self._co.request_rescan(self._clock())
            self._cond.notify()

    def _limit_hit(self, path: bytes) -> None:
        # Runs on whichever thread adds watches (start(), or watchdog's while holding its locks): just note it.
        self._poller.add(path, path == self.root, False)

    def _rel(self, path: bytes | str) -> bytes | None:
        if not path:
            return None
        p = os.fsencode(path)
        if p == self.root:
            return b""
        if p.startswith(self.root) and p[len(self.root):len(self.root) + 1] == b"/":
            return p[len(self.root) + 1:]
        return None

    # ----------------------------------------------------------------------------------------- coalescing thread

    def _run(self) -> None:
        hold_until: float | None = None  # a burst is going on: nothing is released before then
        while True:
            with self._cond:
                while True:
                    if self._stopping:
                        return
                    if self._inbox:
                        break
                    deadline = self._co.deadline()
                    if deadline is not None and hold_until is not None:
                        deadline = max(deadline, hold_until)
                    now = self._clock()
                    if deadline is not None and now >= deadline:
                        break
                    self._cond.wait(None if deadline is None else deadline - now)
                batch, self._inbox = self._inbox, []
            for t, item in batch:
                if isinstance(item, Polled):
                    self._apply_polled(t, item)
                else:
                    self._apply(t, item)
                    self._recent.append((t, len(item)))
            with self._cond:
                now = self._clock()
                deadline = self._co.deadline()
                sets: list[ChangeSet] = []
                if deadline is not None and now >= deadline:
                    hold_until = self._burst_hold(now)
                    if hold_until is None:
                        sets = self._co.take(now, self._max_batch)
                        self.sets_released += len(sets)
            if sets and all(self._deliver(cs) for cs in sets):
                with self._cond:
                    fresh = self._co.unconfirmed()
                gone = missing(self._saferoot, fresh)  # the shipper may have skipped these
                with self._cond:
                    self._co.shipped(self._clock(), gone)

    def _burst_hold(self, now: float) -> float | None:
        """While a burst goes on (``burst_events`` events or more within the last window), when to look again
        before releasing anything; None when sets may go now. Shipping then waits for the writer to pause,
        at most ``burst_hold`` seconds after the oldest pending change: a process writing the tree does not
        compete with our own reading, sending and the destination's writing, which it would on a machine with
        few cores; the burst then ships in a few large sets."""
        recent, edge = self._recent, now - self._window
        while recent and recent[0][0] < edge:
            recent.popleft()
        if sum(n for _, n in recent) < self._burst_events:
            return None
        oldest = self._co.oldest()
        if oldest is None or now - oldest >= self._burst_hold_max:
            return None
        return min(now + self._window / 2, oldest + self._burst_hold_max)

    def _apply(self, t: float, events: list[Raw]) -> None:
        """Feed one batch from the emitter to the coalescer, under one lock. A directory that is new to the
        destination is scanned outside the lock, right after the event that made it so."""
        rel_of, handlers = self._rel, self._handlers
        root_gone = False
        self._cond.acquire()
        try:
            for kind, src, dst, is_dir in events:
                if kind == EVENT_TYPE_MOVED:
                    scans = self._on_moved(src, dst, is_dir, t)
                else:
                    rel = rel_of(src)
                    handler = handlers.get(kind)
                    if rel is None or handler is None:
                        continue
                    if rel == b"" and kind == EVENT_TYPE_DELETED:
                        root_gone = True
                    scans = handler(rel, is_dir, t)
                if scans:
                    self._cond.release()
                    try:
                        self._scan_into(scans, t)
                    finally:
                        self._cond.acquire()
        finally:
            self._cond.release()
        if root_gone:
            self._on_warning(f"the watched root {show(self.root)} was removed; nothing is watched any more: "
                             "recreate it and restart the sync")

    # One handler per event kind, called by _apply under the lock with the root-relative path; each returns the
    # directories to scan.

    def _on_moved(self, src: bytes, dst: bytes, is_dir: bool, t: float) -> Sequence[bytes]:
        s, d = self._rel(src), self._rel(dst)
        if s is not None and d is not None:
            return self._co.moved(s, d, is_dir=is_dir, now=t)
        if d is not None:
            return [d] if self._co.arrived(d, is_dir=is_dir, now=t) else ()
        if s is not None:
            self._co.deleted(s, is_dir=is_dir, now=t)
        return ()

    def _on_created(self, rel: bytes, is_dir: bool, t: float) -> Sequence[bytes]:
        self._co.created(rel, is_dir=is_dir, now=t, hot=not is_dir and self._is_regular(rel))
        return [rel] if is_dir else ()

    def _on_created_closed(self, rel: bytes, is_dir: bool, t: float) -> Sequence[bytes]:
        # One event for a file's create, writes and close (see WatchFD): no lstat, its close settles it anyway.
        self._co.created(rel, is_dir=False, now=t, hot=True)
        self._co.closed(rel, now=t)
        return ()

    def _on_modified(self, rel: bytes, is_dir: bool, t: float) -> Sequence[bytes]:
        self._co.modified(rel, is_dir=is_dir, now=t)
        return ()

    def _on_closed(self, rel: bytes, is_dir: bool, t: float) -> Sequence[bytes]:
        self._co.closed(rel, now=t)
        return ()

    def _on_attrib(self, rel: bytes, is_dir: bool, t: float) -> Sequence[bytes]:
        self._co.attrib(rel, is_dir=is_dir, now=t)
        return ()

    def _on_deleted(self, rel: bytes, is_dir: bool, t: float) -> Sequence[bytes]:
        if rel == b"":
            self._co.request_rescan(t)  # the root itself: _apply warns
        else:
            self._co.deleted(rel, is_dir=is_dir, now=t)
        return ()

    def _apply_polled(self, t: float, item: Polled) -> None:
        co = self._co
        scans: list[bytes] = []
        with self._cond:
            match item.kind:
                case PollKind.RESCAN:
                    co.request_rescan(t)
                case PollKind.CREATED:
                    co.created(item.rel, is_dir=item.is_dir, now=t, new=False)
                    scans = [item.rel] if item.is_dir else []
                case PollKind.DELETED:
                    co.deleted(item.rel, is_dir=item.is_dir, now=t)
                case PollKind.CHANGED:
                    co.modified(item.rel, is_dir=item.is_dir, now=t, hot=False)
        self._scan_into(scans, t)

    def _scan_into(self, tops: Sequence[bytes], t: float) -> None:
        """Content the destination lacks: a directory that appeared (watchdog may miss what is created in it
        before its watch exists), arrived, or was renamed while unknown to the destination."""
        for top in tops:
            if is_ignored(top):
                continue
            found = self._scan(top)
            if found:
                with self._cond:
                    self._co.listed(top, found, now=t)

    def _deliver(self, cs: ChangeSet) -> bool:
        """Hand one set over; False if ``on_changes`` failed (then a rescan is pending instead)."""
        try:
            self._on_changes(cs)
        except Exception:
            log.exception("on_changes failed; the next change set is a rescan", extra=kv(root=self.root))
            with self._cond:
                self._co.request_rescan(self._clock())
            return False
        if cs.rescan:
            with self._cond:
                self._co.reconciled(self._clock())
        return True

    # ----------------------------------------------------------------------------------------- confined I/O

    def _lstat(self, rel: bytes) -> os.stat_result | None:
        root = self._saferoot
        if root is None or root.fd < 0:
            return None
        try:
            return root.lstat(rel.split(b"/") if rel else ())
        except (OSError, UnsafePath):
            return None

    def _exists(self, rel: bytes) -> bool:
        return self._lstat(rel) is not None

    def _is_regular(self, rel: bytes) -> bool:
        st = self._lstat(rel)
        return st is not None and stat.S_ISREG(st.st_mode)

    def _listdir(self, rel: bytes) -> dict[bytes, int] | None:
        return list_types(self._saferoot, rel)

    def _scan(self, top: bytes) -> list[tuple[bytes, bool, bool]]:
        """Everything below directory ``top``: (rel, is_dir, is_regular_file), parents first."""
        out: list[tuple[bytes, bool, bool]] = []
        stack = [top]
        while stack and not self._stopping:
            rel = stack.pop()
            entries = self._listdir(rel)
            if entries is None:
                continue
            for name, kind in sorted(entries.items()):
                child = rel + b"/" + name if rel else name
                is_dir = kind == stat.S_IFDIR
                out.append((child, is_dir, kind == stat.S_IFREG))
                if is_dir:
                    stack.append(child)
        return out

def _log_warning(message: str) -> None:
    log.warning(message, extra=kv(component="watch"))
