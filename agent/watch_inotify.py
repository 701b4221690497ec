"""watchdog glue for the tree watcher: surfaces what watchdog 7.1 only logs (inotify queue overflow) or
swallows (ENOSPC from inotify_add_watch below the root), drops its synthetic events, and stops cleanly.
See :mod:`zcrepl.agent.watch` for what the watcher does with these signals."""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Callable

from watchdog.events import (
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
from watchdog.observers.inotify import InotifyFullEmitter
from watchdog.observers.inotify_c import CallbackId, InotifyEvent, InotifyFD, Mask, WatchCallback, WatchDescriptor

JOIN_TIMEOUT = 1.0

# Only what changes the tree: no IN_OPEN / IN_CLOSE_NOWRITE, so reading a file (our own shipper included)
# costs no events. IN_ATTRIB comes with FileModifiedEvent in watchdog's mask table.
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


class WatchFD(InotifyFD):
    """A private inotify instance that reports what watchdog only logs (overflow) or swallows (ENOSPC)."""

    def __init__(self, on_overflow: Callable[[], None], on_limit: Callable[[bytes], None]) -> None:
        self._zc_on_overflow = on_overflow
        self._zc_on_limit = on_limit
        super().__init__()

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


class WatchEmitter(InotifyFullEmitter):
    """Full events (an unpaired move keeps an empty side, so a move-in is told from a create), minus the
    synthetic ones."""

    def queue_event(self, event: FileSystemEvent) -> None:
        if not event.is_synthetic:
            super().queue_event(event)


class WatchObserver(BaseObserver):
    def __init__(self, fd: WatchFD) -> None:
        self._fd = fd
        super().__init__(WatchEmitter, inotify_fd=fd)

    def on_thread_stop(self) -> None:
        super().on_thread_stop()
        self._fd.stop()
        with contextlib.suppress(RuntimeError):  # never started
            self._fd.join(JOIN_TIMEOUT)


class WatchHandler(FileSystemEventHandler):
    def __init__(self, sink: Callable[[FileSystemEvent], None]) -> None:
        self._sink = sink

    def dispatch(self, event: FileSystemEvent) -> None:
        self._sink(event)
