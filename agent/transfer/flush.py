"""The ``job`` durability policy: flush what the job wrote, and only that, before the job reports done.

``syncfs`` would also wait for every other process's dirty data on the destination filesystem (someone
else's 10 GB make our "done" late by their flush). Instead each file the job completes gets
``sync_file_range(SYNC_FILE_RANGE_WRITE)`` at once (its writeback starts while the job goes on), and its fd
is handed here; fds are fsynced in batches by a few worker threads (on ext4 and XFS the first fsync of a
batch commits the journal for all the files written back meanwhile, so the rest are cheap) and closed. The
directories the job changed are fsynced last (their entries, renames and metadata), and :meth:`JobFlush.wait`
returns when every one of those fsyncs did. fsync, not fdatasync: the mode and mtime set on the fd are part
of what "durable when done" promises.

Open fds are bounded (``BATCH * (IN_FLIGHT + 1)``): the thread that hands in a file waits while that many
are queued.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

from zcrepl.agent.transfer.saferoot import SafeRoot

log = logging.getLogger(__name__)

BATCH = 64  # fds fsynced by one worker in a row
IN_FLIGHT = 4  # batches queued or being fsynced at once; also the number of worker threads
# A directory whose ctime is at least the job's start (less this margin: file timestamps come from the
# kernel's coarse clock, which lags time.time_ns() by up to a tick) was changed during the job.
CTIME_MARGIN_NS = 1_000_000_000
_SYNC_FILE_RANGE_WRITE = 2

_libc = ctypes.CDLL(None, use_errno=True)
_sfr = getattr(_libc, "sync_file_range", None)
if _sfr is not None:
    _sfr.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    _sfr.restype = ctypes.c_int


def start_writeback(fd: int, offset: int = 0, length: int = 0) -> None:
    """Ask the kernel to start writing back ``fd``'s dirty pages in the range (0: to the end) without waiting.

    A hint: where the call is missing or refused (a filesystem without it), the later fsync does the work."""
    if _sfr is not None:
        _sfr(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


class JobFlush:
    """fsyncs handed-in fds in the background; :meth:`wait` makes them all durable or raises the first error."""

    def __init__(self) -> None:
        self.since_ns = time.time_ns() - CTIME_MARGIN_NS
        self._pending: list[int] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(IN_FLIGHT)
        self._pool: ThreadPoolExecutor | None = None
        self._futures: list[Future[None]] = []
        self._closed = False
        self.files = self.dirs = 0  # fds handed in, for the log line

    def file_done(self, fd: int) -> None:
        """Take ownership of a completed file's fd: its writeback starts now, its fsync comes later."""
        start_writeback(fd)
        self.files += 1
        self._take(fd)

    def dir_changed(self, fd: int) -> None:
        """Take ownership of a directory fd whose entries or metadata the job changed."""
        self.dirs += 1
        self._take(fd)

    def changed_since_start(self, st: os.stat_result) -> bool:
        return st.st_ctime_ns >= self.since_ns

    def _take(self, fd: int) -> None:
        with self._lock:
            if self._closed:
                os.close(fd)
                raise RuntimeError("JobFlush used after wait() or close()")
            self._pending.append(fd)
            batch = self._pending if len(self._pending) >= BATCH else None
            if batch is not None:
                self._pending = []
        if batch is not None:
            self._submit(batch)

    def _submit(self, batch: list[int]) -> None:
        self._slots.acquire()  # backpressure: at most IN_FLIGHT batches of fds open at once
        try:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(IN_FLIGHT, thread_name_prefix="zc-flush")
                self._futures.append(self._pool.submit(self._sync, batch))
        except BaseException:
            self._slots.release()
            _close_all(batch)
            raise

    def _sync(self, batch: list[int]) -> None:
        try:
            for i, fd in enumerate(batch):
                try:
                    os.fsync(fd)
                except BaseException:
                    _close_all(batch[i:])
                    raise
                os.close(fd)
        finally:
            self._slots.release()

    def wait(self) -> None:
        """fsync everything handed in (the remainder on this thread) and return when all of it is durable.

        Raises the first fsync error (EIO, ENOSPC...): then what the job wrote may not be on disk."""
        with self._lock:
            self._closed = True
            rest, self._pending = self._pending, []
        try:
            if rest:
                self._slots.acquire()
                self._sync(rest)
        finally:
            self._join()

    def close(self) -> None:
        """End of a failed attempt: wait for the batches under way, close the rest without fsync."""
        with self._lock:
            self._closed = True
            rest, self._pending = self._pending, []
        _close_all(rest)
        try:
            self._join()
        except OSError as err:
            log.debug("fsync failed in an abandoned attempt", exc_info=err)

    def _join(self) -> None:
        pool, futures = self._pool, self._futures
        self._pool, self._futures = None, []
        if pool is not None:
            pool.shutdown(wait=True)
        errors = [e for f in futures if (e := f.exception()) is not None]
        if errors:
            raise errors[0]


def sync_ancestors(export: SafeRoot, rel: tuple[bytes, ...], since_ns: int) -> None:
    """fsync the directories from the export down to the job's root that changed since ``since_ns`` (the
    job's root may have been created with its missing parents: their entries must be durable too)."""
    for depth in range(len(rel)):
        fd = export.open_dir(rel[:depth])
        try:
            if os.fstat(fd).st_ctime_ns >= since_ns:
                os.fsync(fd)
        finally:
            os.close(fd)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
