"""watchdog glue for the tree watcher: watchdog's inotify layer (``InotifyFD`` reads the kernel queue and keeps the
watches, ``InotifyWatchGroup`` follows the tree and pairs moves), with a lean path from there to the watcher.

What it surfaces that watchdog 7.1 only logs (inotify queue overflow) or swallows (ENOSPC from inotify_add_watch
below the root) is described in :mod:`zcrepl.agent.watch`. What it leaves out, because a process writing the
watched tree competes with every bit of Python work done per event (issue 11, item 5):

- **reads in batches**: while events keep coming, the reader pauses ``pace`` seconds between reads, so one
  read takes hundreds of events instead of waking three threads per event; everything after the read runs
  on threads lowered to the transfers' CPU priority, so a writer competes with little more than the read;
- **no per-event objects past the watch group**: watchdog's emitter builds one or two ``FileSystemEvent``
  objects per event and hands each through a queue to its observer thread and our handler; here the emitter
  thread takes every event that is ready in one go and hands the watcher one list of plain tuples
  (:data:`Raw`), the observer thread idles, and ``DirModifiedEvent`` (which the watcher never used) is
  never made;
- **no IN_MODIFY storms**: a write to a file whose creation or last write went through less than ``merge``
  seconds ago is dropped before anything is built for it (see :class:`WatchFD`);
- **one event per new file**: its IN_CREATE and IN_CLOSE_WRITE, read together, become one (:data:`CREATED_CLOSED`),
  which needs no lstat either; and watchdog's walk of a new directory (an IN_CREATE per file already in it) is
  left out, since the watcher scans new directories itself.

Everything else is watchdog's own code: watch bookkeeping, recursion into new directories, move pairing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from watchdog.events import (
    EVENT_TYPE_ATTRIB,
    EVENT_TYPE_CLOSED,
    EVENT_TYPE_CREATED,
    EVENT_TYPE_DELETED,
    EVENT_TYPE_MODIFIED,
    EVENT_TYPE_MOVED,
    DirAttribEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver
from watchdog.observers.inotify import InotifyFullEmitter, InotifyWatchGroup
from watchdog.observers.inotify_c import (
    DEFAULT_EVENT_BUFFER_SIZE,
    CallbackId,
    InotifyConstants,
    InotifyEvent,
    InotifyFD,
    Mask,
    WatchCallback,
    WatchDescriptor,
)
from watchdog.observers.inotify_move_event_grouper import GroupedInotifyEvent, PathedInotifyEvent

from zcrepl.agent import priority
from zcrepl.core.logs import carry, context_fields, log_context

JOIN_TIMEOUT = 1.0

Raw = tuple[str, bytes, bytes, bool]
"""One event for the watcher: (watchdog's event type, source path, destination path, is a directory). A move
with one side outside the tree (or in no watched directory) has ``b""`` there."""

BatchFn = Callable[[list[Raw]], None]

# Only what changes the tree: no IN_OPEN / IN_CLOSE_NOWRITE, so reading a file (our own shipper included)
# costs no events. It sets the inotify mask (watchdog's emitter derives it from these classes).
EVENT_FILTER: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    DirCreatedEvent,
    FileDeletedEvent,
    DirDeletedEvent,
    FileMovedEvent,
    DirMovedEvent,
    FileModifiedEvent,
    FileAttribEvent,
    DirAttribEvent,
    FileClosedEvent,
]

_C = InotifyConstants
_MODIFY, _CREATE, _ISDIR, _OVERFLOW = _C.IN_MODIFY, _C.IN_CREATE, _C.IN_ISDIR, _C.IN_Q_OVERFLOW
_ENDS_WRITING = _C.IN_CLOSE_WRITE | _C.IN_DELETE | _C.IN_MOVED_FROM | _C.IN_MOVED_TO
_DIRISH = _C.IN_ISDIR | _C.IN_DELETE_SELF | _C.IN_MOVE_SELF  # watchdog's InotifyEvent.is_directory
_FUSED = _C.IN_CREATE | _C.IN_CLOSE_WRITE  # a mask inotify never sends: made by WatchFD._events_of

# What one inotify mask becomes (besides the plain event kinds): a name moved in or out of the tree (the other
# half was not paired), and the watched directory itself deleted (an event only when it is the root).
_MOVED_IN, _MOVED_OUT, _SELF_DELETED = "moved_in", "moved_out", "self_deleted"


CREATED_CLOSED = "created_closed"
"""A file's IN_CREATE and its IN_CLOSE_WRITE from the same read, with at most IN_MODIFY between them, as one event
(see :meth:`WatchFD._events_of`): it was created and written, and is closed."""


def _kind_of(mask: int) -> str | None:
    """The kind ``mask`` is reported as, or None when it is not wanted; the order of
    ``InotifyEmitter.build_and_queue_event`` (full events), without DirModifiedEvent."""
    is_dir = bool(mask & _DIRISH)
    if mask & _FUSED == _FUSED and not is_dir:
        return CREATED_CLOSED
    if mask & _C.IN_MOVED_TO:
        return _MOVED_IN
    if mask & _C.IN_ATTRIB:
        return EVENT_TYPE_ATTRIB
    if mask & _MODIFY:
        return None if is_dir else EVENT_TYPE_MODIFIED
    if mask & _C.IN_DELETE:
        return EVENT_TYPE_DELETED
    if mask & _C.IN_MOVED_FROM:
        return _MOVED_OUT
    if mask & _CREATE:
        return EVENT_TYPE_CREATED
    if mask & _C.IN_DELETE_SELF:
        return _SELF_DELETED
    if not is_dir and mask & _C.IN_CLOSE_WRITE:
        return EVENT_TYPE_CLOSED
    return None


class _Kinds(dict[int, str | None]):
    """``_kind_of`` per mask seen so far: a writer creating thousands of files repeats a handful of masks, and one
    dict lookup per event costs less than walking the bit tests (masks are a few flag combinations, so it stays
    small)."""

    def __missing__(self, mask: int) -> str | None:
        kind = self[mask] = _kind_of(mask)
        return kind


_KINDS = _Kinds()


def _translate(batch: list[GroupedInotifyEvent], root: bytes) -> tuple[list[Raw], bool]:
    """The batch as :data:`Raw` tuples, and whether the watched root itself was deleted (the emitter stops)."""
    out: list[Raw] = []
    stop = False
    kinds = _KINDS
    for item in batch:
        if not isinstance(item, PathedInotifyEvent):
            source, target = item
            out.append((EVENT_TYPE_MOVED, source.path, target.path, bool(source.ev.mask & _DIRISH)))
            continue
        mask, path = item.ev.mask, item.path
        kind = kinds[mask]
        if kind is None:
            continue
        is_dir = bool(mask & _DIRISH)
        if kind == _MOVED_IN:
            out.append((EVENT_TYPE_MOVED, b"", path, is_dir))
        elif kind == _MOVED_OUT:
            out.append((EVENT_TYPE_MOVED, path, b"", is_dir))
        elif kind == _SELF_DELETED:
            if path == root:
                out.append((EVENT_TYPE_DELETED, path, b"", is_dir))
                stop = True
        else:
            out.append((kind, path, b"", is_dir))
    return out, stop


class WatchFD(InotifyFD):
    """A private inotify instance that reports what watchdog only logs (overflow) or swallows (ENOSPC), reads
    in batches while events keep coming, and drops redundant IN_MODIFY events.

    ``merge``: an IN_MODIFY of a file is dropped when the last event let through for that name (in that
    directory) was its IN_CREATE or an IN_MODIFY, less than ``merge`` seconds earlier. That event made the
    watcher hold the file as *hot* (being written) until ``quiet`` passed without events, and ``merge`` is at
    most ``quiet``: the held upsert is read after the dropped write happened, so nothing it wrote is missed; a
    write ``merge`` later goes through again and restarts the wait. A close, delete or move of the name lets
    the next write through at once. ``merge=0`` keeps every event.

    ``pace``: after a read, when the previous one came less than ``pace`` seconds before, wait ``pace`` before
    reading again (a burst then costs one read, one hand-over and one coalescing pass per ``pace``; a lone
    change is read at once).

    The reading thread only reads; parsing, merging and watchdog's handling run on a second thread, lowered
    like the transfers (:meth:`_handle_backlog`). Both use watchdog 7's private ``_read_event_buffer`` and
    ``_parse_event_buffer`` (the public ``read_events`` does both at once).
    """

    def __init__(self, on_overflow: Callable[[], None], on_limit: Callable[[bytes], None], *,
                 merge: float = 0.0, pace: float = 0.0) -> None:
        self._zc_on_overflow = on_overflow
        self._zc_on_limit = on_limit
        self._merge = merge
        self._pace = pace
        self._writing: dict[tuple[int, bytes], float] = {}  # (wd, name) -> when its last write went through
        self._pruned = 0.0
        self._backlog: deque[bytes | None] = deque()  # read, not yet handled (None: the reader ended)
        self._backlog_cond = threading.Condition()
        self._zc_log = dict(context_fields())  # the watch rule's: its lines name it on this thread too
        self._zc_released = False  # the inotify fd and the kill pipe are closed
        self._zc_reader_done = False  # the reading thread is past its loop
        super().__init__()

    def run(self) -> None:
        with log_context(**self._zc_log):
            self._zc_read()

    def _zc_read(self) -> None:
        handler = threading.Thread(target=carry(self._handle_backlog), name="zc-watch-handle", daemon=True)
        handler.start()
        try:
            last = float("-inf")
            while self.should_keep_running():
                # Raw bytes only: the events are parsed and handled on the other thread.
                buf = self._read_event_buffer(DEFAULT_EVENT_BUFFER_SIZE)
                if buf:
                    with self._backlog_cond:
                        self._backlog.append(buf)
                        self._backlog_cond.notify()
                now = time.monotonic()
                if buf and self._pace and now - last < self._pace:
                    time.sleep(self._pace)  # a burst: let the kernel queue fill (16,384 events by default)
                last = now
        finally:
            with self._lock:
                self._zc_reader_done = True
                if self._closed:  # stopped before (or without) a read that would have closed them
                    self._close_resources()
            with self._backlog_cond:
                self._backlog.append(None)
                self._backlog_cond.notify()
            handler.join(JOIN_TIMEOUT)

    def close(self) -> None:
        # watchdog leaves the fds to the reading thread whenever it believes one reads (its flag starts true), and
        # a thread stopped before its first read, or never started, never closes them: 3 fds lost per rule that
        # was removed at once (a test's fd check caught it).
        super().close()
        with self._lock:  # the reader's exit checks under the same lock: one of the two closes them
            if self._zc_reader_done or not self.is_alive():
                self._close_resources()

    def _close_resources(self) -> None:
        if not self._zc_released:  # the reader, close() and the reader's exit may each get here
            self._zc_released = True
            super()._close_resources()

    def _handle_backlog(self) -> None:
        """watchdog's handling of what the reader read (watch bookkeeping, move pairing, our hooks), in order, on
        a thread of its own at the priority of background work: a process writing the tree competes only with
        the reader, which does nothing per event."""
        priority.apply_to_this_thread()
        while True:
            with self._backlog_cond:
                while not self._backlog:
                    self._backlog_cond.wait()
                buf = self._backlog.popleft()
            if buf is None:
                return
            for event in self._events_of(buf):
                self.handle_event(event)

    def read_events(self, *, event_buffer_size: int = DEFAULT_EVENT_BUFFER_SIZE) -> list[InotifyEvent]:
        """watchdog's interface (``run`` reads and parses on separate threads instead)."""
        return self._events_of(self._read_event_buffer(event_buffer_size))

    def _events_of(self, buf: bytes) -> list[InotifyEvent]:
        """The events in one read, as watchdog's ``read_events`` makes them, less the IN_MODIFY merged away
        (before an object is made for it), and with a file's IN_CLOSE_WRITE folded into its IN_CREATE when
        both are in this read and nothing but IN_MODIFY (merged away) came for the name between them: the
        one event (mask ``IN_CREATE | IN_CLOSE_WRITE``, :data:`CREATED_CLOSED`) tells the watcher the file
        is new and closed, with no lstat to learn it is a regular file and no object, watchdog dispatch or
        coalescer call for the close. A writer creating many small files sends one event per file through
        everything after the read instead of two."""
        now = time.monotonic()
        writing, merge, merged = self._writing, self._merge, self._merged
        kept: list[tuple[WatchDescriptor, Mask, int, bytes]] = []
        created: dict[tuple[int, bytes], int] = {}  # files whose IN_CREATE is kept[i], nothing since but merges
        for wd, mask, cookie, name in InotifyFD._parse_event_buffer(buf):
            if wd == -1 and not mask & _OVERFLOW:
                continue  # watchdog drops the kernel's other global events too
            if not mask & _ISDIR:
                key = (wd, name)
                if merge and merged(key, mask, now):
                    continue
                i = created.pop(key, None)
                if i is not None and mask & _C.IN_CLOSE_WRITE:
                    kept[i] = (wd, Mask(kept[i][1] | _C.IN_CLOSE_WRITE), 0, name)
                    continue
                if mask & _CREATE:
                    created[key] = len(kept)
            kept.append((wd, mask, cookie, name))
        if writing and now - self._pruned > merge:  # files left open, or whose close was in a lost event
            self._pruned = now
            for stale in [k for k, since in writing.items() if now - since >= merge]:
                del writing[stale]
        return [InotifyEvent(*e) for e in kept]

    def _merged(self, key: tuple[int, bytes], mask: int, now: float) -> bool:
        """Whether this event of a file is an IN_MODIFY to drop (see the class), keeping the record of writes."""
        writing = self._writing
        if mask & _MODIFY:
            since = writing.get(key)
            if since is not None and now - since < self._merge:
                return True
            writing[key] = now
        elif mask & _CREATE:
            writing[key] = now
        elif mask & _ENDS_WRITING:
            writing.pop(key, None)
        elif mask & _OVERFLOW:
            writing.clear()
        return False

    def handle_event(self, event: InotifyEvent) -> None:
        super().handle_event(event)  # for an overflow: watchdog re-adds the watches first
        if event.is_queue_overflow:
            self._zc_on_overflow()

    def add_callback(self, path: bytes, mask: Mask, callback: WatchCallback, id_: CallbackId) -> WatchDescriptor:
        try:
            get_or_create = getattr(self, "_get_or_create_watch", None)
            if get_or_create is None:  # not watchdog 7.x: its own path, warning included
                return super().add_callback(path, mask, callback, id_)
            # watchdog 7.1 warns (RuntimeWarning) whenever a group re-adds a watch it already holds, which
            # happens each time a new directory tree appears (its subdirectories are walked from the parent's
            # IN_CREATE and again from their own). With warnings as errors that kills this reader thread, so
            # the identical callback is registered here without the warning.
            with self._lock:
                watch = get_or_create(path, mask)
                watch.callbacks[id_] = callback
                return watch.wd
        except OSError as err:
            if err.errno == errno.ENOSPC:
                self._zc_on_limit(path)
            raise


class BatchGrouper:
    """watchdog's ``InotifyMoveEventGrouper`` contract, read in batches.

    An IN_MOVED_FROM is held ``delay`` seconds for its IN_MOVED_TO (same cookie), and everything queued behind
    it waits with it, so event order is kept; a paired move is queued as one (from, to) item when its
    IN_MOVED_TO comes. Unlike watchdog's queue, the reader is woken as soon as the pair is made rather than
    at the end of the hold, and :meth:`read_batch` returns every item that is ready.
    """

    delay = 0.5

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: deque[tuple[GroupedInotifyEvent, float]] = deque()  # (item, held until; 0.0 = not held)
        self._closed = False

    def put_event(self, event: PathedInotifyEvent) -> None:
        with self._cond:
            item: GroupedInotifyEvent = event
            woke = not self._queue
            if event.ev.is_moved_to:
                i = self._index_of_moved_from(event.ev.cookie)
                if i is not None:
                    source = self._queue[i][0]
                    del self._queue[i]
                    item = (source, event)  # type: ignore[assignment]
                    woke = woke or i == 0
            self._queue.append((item, time.monotonic() + self.delay if event.ev.is_moved_from else 0.0))
            if woke:  # a reader waits only on an empty queue or on a held head
                self._cond.notify()

    def get_queued_moved_from_event(self, cookie: int) -> PathedInotifyEvent | None:
        with self._cond:
            i = self._index_of_moved_from(cookie)
            return None if i is None else self._queue[i][0]  # type: ignore[return-value]

    def discard_pending_events(self) -> None:
        with self._cond:
            self._queue.clear()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def read_event(self) -> GroupedInotifyEvent | None:
        """One item (watchdog's interface; the emitter here uses :meth:`read_batch`)."""
        with self._cond:
            while not self._closed:
                wait = self._ready_in()
                if wait <= 0:
                    return self._queue.popleft()[0]
                self._cond.wait(wait)
            return None

    def read_batch(self) -> list[GroupedInotifyEvent] | None:
        """Every item ready now, in order (at least one: it blocks until then); None once closed."""
        with self._cond:
            while not self._closed:
                wait = self._ready_in()
                if wait <= 0:
                    now, out, q = time.monotonic(), [], self._queue
                    while q and q[0][1] <= now:
                        out.append(q.popleft()[0])
                    return out
                self._cond.wait(wait)
            return None

    def _ready_in(self) -> float:
        """0 or less when the head is ready; else how long to wait (an hour when empty: a put wakes us)."""
        if not self._queue:
            return 3600.0
        return self._queue[0][1] - time.monotonic()

    def _index_of_moved_from(self, cookie: int) -> int | None:
        for i, (item, _) in enumerate(self._queue):
            if isinstance(item, PathedInotifyEvent) and item.ev.is_moved_from and item.ev.cookie == cookie:
                return i
        return None


class WatchGroup(InotifyWatchGroup):
    """watchdog's watch group with :class:`BatchGrouper` in place of its move grouper."""

    def __post_init__(self) -> None:
        self._move_event_grouper = BatchGrouper()  # type: ignore[assignment]
        super().__post_init__()

    def read_batch(self) -> list[GroupedInotifyEvent] | None:
        grouper: BatchGrouper = self._move_event_grouper  # type: ignore[assignment]
        return grouper.read_batch()

    def _recursive_simulate(self, src_path: bytes) -> list[InotifyEvent]:
        # watchdog walks a new (or renamed) directory and makes an IN_CREATE for everything in it; the watcher
        # scans such directories itself. In a burst the new directory's IN_CREATE is handled after the writer
        # put hundreds of files in it, and each of them then cost an event and an lstat on top of the scan.
        return []


class WatchEmitter(InotifyFullEmitter):
    """Hands the watcher every event that is ready as one list of :data:`Raw` tuples: the events
    ``InotifyFullEmitter`` would emit through ``EVENT_FILTER``, minus its synthetic ones (a moved directory's
    children, a moved-in directory's content: the watcher scans new directories itself)."""

    def __init__(self, *args: Any, sink: BatchFn, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sink = sink

    def on_thread_start(self) -> None:
        # Background work like the shipping it feeds (which lowers the coalescing thread the same way): only the
        # reader, which must drain the kernel queue before it overflows, keeps the agent's priority.
        priority.apply_to_this_thread()
        # InotifyEmitter.on_thread_start, with our group.
        self._inotify = WatchGroup(self._inotify_fd, os.fsencode(self.watch.path),
                                   is_recursive=self.watch.is_recursive, event_mask=self.get_event_mask_from_filter(),
                                   follow_symlink=self.watch.follow_symlink)

    def queue_events(self, timeout: float, *, full_events: bool = False) -> None:
        with self._lock:
            group = self._inotify
        if not isinstance(group, WatchGroup):
            return
        batch = group.read_batch()
        if not batch:
            return
        out, stop = _translate(batch, os.fsencode(self.watch.path))
        with self._lock:
            if self._inotify is None:
                return  # stopped meanwhile
        if out:
            self._sink(out)
        if stop:
            self.stop()


class WatchObserver(BaseObserver):
    """Owns the emitter thread and stops the reader with it; its own dispatch thread gets no events."""

    def __init__(self, fd: WatchFD, sink: BatchFn) -> None:
        self._fd = fd
        super().__init__(WatchEmitter, inotify_fd=fd, sink=sink)

    def on_thread_stop(self) -> None:
        super().on_thread_stop()
        self._fd.stop()
        with contextlib.suppress(RuntimeError):  # never started
            self._fd.join(JOIN_TIMEOUT)


NO_HANDLER = FileSystemEventHandler()
"""The observer wants a handler per watch; events go to the emitter's sink instead."""
