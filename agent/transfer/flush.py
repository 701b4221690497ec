"""The ``job`` durability policy: flush what the job wrote, and only that, before the job reports done.

``syncfs`` would also wait for every other process's dirty data on the destination filesystem (someone
else's 10 GB make our "done" late by their flush). Instead each file the job completes gets
``sync_file_range(SYNC_FILE_RANGE_WRITE)`` (its writeback starts while the job goes on: at once for a big
file, with its batch of 64 for a small one) and its fd is handed here; a few worker threads take the fds in
batches, wait for them and close them; the directories the job changed are handed in too;
:meth:`JobFlush.wait` returns when all of it is on disk. How that is done depends on the filesystem:

- ext4 with a journal and XFS keep all metadata in one journal (log) committed in order, and a commit flushes
  the device's cache first. There a file needs only its data written (``sync_file_range`` with both WAITs: block
  allocation, size and unwritten-extent conversion are then journaled), and one journal commit after the
  last of those waits makes every file and directory durable at once: the last step touches the job's root
  directory (its own times set again, unchanged) and fsyncs it, which commits the journal up to now. A
  directory's entries and times are journal metadata too, so a changed directory is not fsynced on its own
  (each such fsync found its transaction committed and only flushed the device's cache again: 200
  directories, 200 cache flushes). A file or directory on another filesystem (a mount below the root) is
  fsynced.
- Anywhere else every file and directory gets its own fsync: btrfs logs per inode, and an ext4 made without a journal
  (``mkfs.ext4 -O ^has_journal``, as this project's test VM's root) has no commit that covers other inodes
  (its fsync writes that one inode), though statfs names it ext4 all the same.

fsync, not fdatasync: the mode and mtime set on the fd are part of what "durable when done" promises.

A big file is also flushed while it arrives (:meth:`JobFlush.flush_early`, every ``receive.FLUSH_STEP``
behind the write position, ``fdatasync`` from one helper thread): a device with a volatile cache (this VM's
virtio disk, the loop-mounted ext4 the benchmark runs on, many SSDs) takes written data into its cache and
writes it out when the cache is flushed, so without that the job's final commit waited for the whole file to
drain (256 MiB: ~0.09 s after the last byte here); with it, for the last step only. The final wait and
commit still cover every byte: an early flush only moves work earlier, and its error fails the job.

Open fds are bounded (``BATCH * (in_flight() + 1)``): the thread that hands in a file waits while that many
are queued. The bound grows with the process's fd limit: the receiving thread blocked on it stalls the whole
transfer while the kernel finishes earlier writes (0.18 s of a 20,000-file job at 4 batches, 0.04 s at 16).
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

from zcrepl.agent.transfer.saferoot import SafeRoot
from zcrepl.core.errors import TransferError, UnsafePath
from zcrepl.core.logs import kv

log = logging.getLogger(__name__)

BATCH = 64  # fds flushed by one worker in a row
WORKERS = 4  # threads that start, wait for and close the batches
MAX_IN_FLIGHT = 16  # batches queued or being flushed at once, where the fd limit allows (see in_flight)
# A directory whose ctime is at least the job's start (less this margin: file timestamps come from the
# kernel's coarse clock, which lags time.time_ns() by up to a tick) was changed during the job.
CTIME_MARGIN_NS = 1_000_000_000
WRITEBACK_NOW = 1 << 20  # files this big start their writeback as they complete; smaller ones with their batch
_SYNC_FILE_RANGE_WRITE = 2
_SYNC_FILE_RANGE_WAIT_ALL = 1 | 2 | 4  # WAIT_BEFORE | WRITE | WAIT_AFTER: this file's data is on the device
_EXT4, _XFS = 0xEF53, 0x58465342  # statfs f_type

_libc = ctypes.CDLL(None, use_errno=True)
_sfr = getattr(_libc, "sync_file_range", None)
if _sfr is not None:
    _sfr.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    _sfr.restype = ctypes.c_int


def journaled(fd: int) -> bool:
    """Whether ``fd`` is on XFS or on an ext4 with a journal, where one journal commit makes all earlier
    written data durable."""
    buf = ctypes.create_string_buffer(256)  # struct statfs; f_type is its first field (a long)
    if _sfr is None or _libc.fstatfs(fd, buf) != 0:
        return False
    kind = ctypes.c_long.from_buffer(buf).value
    return kind == _XFS or (kind == _EXT4 and ext4_has_journal(os.fstat(fd).st_dev))


def ext4_has_journal(dev: int, proc: str = "/proc", sys: str = "/sys") -> bool:
    """Whether the ext4 on device ``dev`` runs with a journal: its mount options in /proc/fs/ext4/NAME/options
    name a data= journaling mode only then. Unknown (no /proc or /sys, a name not found) counts as no journal:
    the per-file fsync is right on every filesystem, the one commit only where the journal is certain."""
    try:
        name = os.path.basename(os.readlink(f"{sys}/dev/block/{os.major(dev)}:{os.minor(dev)}"))
        with open(f"{proc}/fs/ext4/{name}/options", encoding="ascii", errors="replace") as f:
            return any(line.startswith("data=") for line in f)
    except OSError:
        return False


def in_flight() -> int:
    """Batches of fds one job may hold open: at most an eighth of the soft fd limit (several jobs and their
    connections share it), never fewer than WORKERS (4 batches, 256 fds, under the common limit of 1,024)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return MAX_IN_FLIGHT
    return max(WORKERS, min(MAX_IN_FLIGHT, soft // (8 * BATCH)))


def syncfs(fd: int) -> None:
    """Flush the whole filesystem holding ``fd`` (the fallback when the journal cannot be committed through
    the job's root)."""
    if _libc.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _wait_data(fd: int) -> None:
    assert _sfr is not None
    if _sfr(fd, 0, 0, _SYNC_FILE_RANGE_WAIT_ALL) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def start_writeback(fd: int, offset: int = 0, length: int = 0) -> None:
    """Ask the kernel to start writing back ``fd``'s dirty pages in the range (0: to the end) without waiting.

    A hint: where the call is missing or refused (a filesystem without it), the later fsync does the work."""
    if _sfr is not None:
        _sfr(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


class JobFlush:
    """Flushes handed-in fds in the background; :meth:`wait` makes them all durable or raises the first error.

    ``root_fd`` (the job's root directory, the caller's) is where the final journal commit is made on ext4
    and XFS; it must stay open until :meth:`wait` returns."""

    def __init__(self, root_fd: int) -> None:
        self.since_ns = time.time_ns() - CTIME_MARGIN_NS
        self._root = root_fd
        self.journaled = journaled(root_fd)
        self._dev = os.fstat(root_fd).st_dev  # a file on another filesystem (a mount below the root) is fsynced
        self._pending: list[tuple[int, bool]] = []  # (fd, is a directory)
        self._lock = threading.Lock()
        self.in_flight = in_flight()
        self._slots = threading.BoundedSemaphore(self.in_flight)
        self._pool: ThreadPoolExecutor | None = None
        self._futures: list[Future[None]] = []
        self._closed = False
        self._noted: set[tuple[tuple[bytes, ...], bool]] = set()  # (path below the root, is a directory)
        self.files = self.dirs = 0  # fds handed in, for the log line
        self._early: ThreadPoolExecutor | None = None  # one thread: fdatasync of big files still arriving
        self._early_pending: set[int] = set()  # fds with an early flush queued or running
        self.early_flushes = 0

    def file_done(self, fd: int, size: int = WRITEBACK_NOW) -> None:
        """Take ownership of a completed file's fd (``size`` bytes): its writeback starts now when it is big,
        with its batch otherwise (the call costs ~50 us, more than a small file's wait for its batch)."""
        if size >= WRITEBACK_NOW:
            start_writeback(fd)
        self._take(fd, False)

    def flush_early(self, fd: int) -> None:
        """Make what a big file still being received holds so far durable, in the background (see the
        module's docstring). The fd stays the caller's: the flush works on a duplicate, so the file may be
        committed or discarded meanwhile. Skipped while one for this fd is queued or running."""
        with self._lock:
            if self._closed or fd in self._early_pending:
                return
            self._early_pending.add(fd)
            dup = -1
            try:
                dup = os.dup(fd)
                if self._early is None:
                    self._early = ThreadPoolExecutor(1, thread_name_prefix="zc-early-flush")
                self._futures.append(self._early.submit(self._fdatasync, fd, dup))
            except BaseException:
                self._early_pending.discard(fd)
                if dup >= 0:
                    os.close(dup)
                raise
            self.early_flushes += 1

    def _fdatasync(self, fd: int, dup: int) -> None:
        # A failure is raised by wait(): the duplicate shares the file's error state, so this call may be
        # the one that reports a writeback error the final wait would then not see again.
        try:
            os.fdatasync(dup)
        finally:
            os.close(dup)
            with self._lock:
                self._early_pending.discard(fd)

    def dir_changed(self, fd: int) -> None:
        """Take ownership of a directory fd whose entries or metadata the job changed."""
        self._take(fd, True)

    def note(self, parts: tuple[bytes, ...], is_dir: bool) -> None:
        """A path below the root to flush at :meth:`wait` (opened then: no fd is held meanwhile)."""
        with self._lock:
            self._noted.add((parts, is_dir))

    def changed_since_start(self, st: os.stat_result) -> bool:
        return st.st_ctime_ns >= self.since_ns

    def _take(self, fd: int, is_dir: bool) -> None:
        with self._lock:
            if self._closed:
                os.close(fd)
                raise RuntimeError("JobFlush used after wait() or close()")
            self._pending.append((fd, is_dir))
            if is_dir:
                self.dirs += 1
            else:
                self.files += 1
            batch = self._pending if len(self._pending) >= BATCH else None
            if batch is not None:
                self._pending = []
        if batch is not None:
            self._submit(batch)

    def _submit(self, batch: list[tuple[int, bool]]) -> None:
        self._slots.acquire()  # backpressure: at most in_flight batches of fds open at once
        try:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="zc-flush")
                self._futures.append(self._pool.submit(self._sync, batch))
        except BaseException:
            self._slots.release()
            _close_all(batch)
            raise

    def _sync(self, batch: list[tuple[int, bool]]) -> None:
        try:
            for fd, is_dir in batch:
                if not is_dir:
                    start_writeback(fd)  # the whole batch's writes in flight before the first wait
            for i, (fd, is_dir) in enumerate(batch):
                try:
                    if not self.journaled or os.fstat(fd).st_dev != self._dev:
                        os.fsync(fd)
                    elif not is_dir:
                        _wait_data(fd)  # the journal commit at the end covers its metadata (a directory: all of it)
                except BaseException:
                    _close_all(batch[i:])
                    raise
                os.close(fd)
        finally:
            self._slots.release()

    def wait(self, label: str, root: SafeRoot | None = None) -> None:
        """Flush everything handed in and noted (paths opened below ``root``), and return when all of it is
        durable.

        A failed wait or fsync (EIO, ENOSPC...) raises :class:`TransferError` naming ``label`` (the
        destination): what the job wrote may not be on disk, and the job must not report done."""
        try:
            if root is not None:
                self._open_noted(root)
            self._wait()
        except OSError as err:
            raise TransferError(f"{label}: what this job wrote could not be made durable ({err.strerror or err}); "
                                "the job is not done: check that disk (dmesg, free space), then run it again") from err
        if self.files or self.dirs:
            log.debug("job flushed", extra=kv(files=self.files, dirs=self.dirs, one_commit=self.journaled))

    def _wait(self) -> None:
        with self._lock:
            self._closed = True
            rest, self._pending = self._pending, []
        try:
            if rest:
                self._slots.acquire()
                self._sync(rest)
        finally:
            self._join()
        if self.journaled and (self.files or self.dirs):
            self._commit()

    def _open_noted(self, root: SafeRoot) -> None:
        with self._lock:
            noted, self._noted = self._noted, set()
        for parts, is_dir in sorted(noted, key=lambda n: -len(n[0])):  # children first, as finish_dirs
            try:
                fd = root.open_dir(parts) if is_dir else root.open_read(parts)
            except (OSError, UnsafePath):
                continue  # gone or replaced since: its parent's entry is what changed, and that is noted
            if is_dir:
                self.dir_changed(fd)
            else:
                self.file_done(fd)

    def _commit(self) -> None:
        """One journal commit after every data wait: the root's times set again (unchanged) put it in the
        running transaction, and its fsync commits that transaction and every one before it."""
        st = os.fstat(self._root)
        try:
            os.utime(self._root, ns=(st.st_atime_ns, st.st_mtime_ns))
        except PermissionError:  # a root we may not touch: flush the filesystem rather than promise less
            syncfs(self._root)
            return
        os.fsync(self._root)

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
        with self._lock:
            pool, early, futures = self._pool, self._early, self._futures
            self._pool, self._early, self._futures = None, None, []
        for p in (pool, early):
            if p is not None:
                p.shutdown(wait=True)
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


def _close_all(items: list[tuple[int, bool]]) -> None:
    for fd, _ in items:
        try:
            os.close(fd)
        except OSError:
            pass
