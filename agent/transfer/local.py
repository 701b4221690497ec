"""Same-host replication (``hostA:/x hostA:/y``): no socket at all.

The scan feeds the same TreeWriter the network receiver uses (same validation, atomic temp+rename,
delete and directory rules); needed files are copied in the kernel with ``os.copy_file_range``
(reflinks where the filesystem has them), falling back to ``os.sendfile`` and then to read+write.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from zcrepl.agent import priority
from zcrepl.agent.transfer.apply import TreeWriter
from zcrepl.agent.transfer.failure import explain
from zcrepl.agent.transfer.flush import sync_ancestors
from zcrepl.agent.transfer.frame import F_SPARSE, Entry, FileHead, Kind
from zcrepl.agent.transfer.jobdirs import ExtraDirs, attach_dirs, detach_dirs
from zcrepl.agent.transfer.kcopy import ALL_PATHS, CopyPaths, copy_range
from zcrepl.agent.transfer.limits import SessionLimits
from zcrepl.agent.transfer.plan import PlanWriter, make_writer, open_job_root
from zcrepl.agent.transfer.saferoot import SafeRoot, validate_relpath
from zcrepl.agent.transfer.scan import Scanner, Skips, source_changed, source_trouble, tree_filter
from zcrepl.agent.transfer.sourcefile import as_scanned, data_segments
from zcrepl.core.errors import Cancelled, UnsafePath
from zcrepl.core.exportpolicy import DEFAULT_POLICY, ExportPolicy
from zcrepl.core.logs import carry, kv
from zcrepl.core.types import JobOptions, PlanItem, TransferStats

log = logging.getLogger(__name__)
_STOP = -1

class LocalCopy:
    def __init__(self, job_id: int, src: SafeRoot, dst_export: SafeRoot, dst_rel: tuple[bytes, ...],
                 options: JobOptions, label: str, cancel: threading.Event,
                 on_progress: Callable[[TransferStats], None], workers: int = 2,
                 policy: ExportPolicy = DEFAULT_POLICY, limits: SessionLimits | None = None,
                 dirs: ExtraDirs | None = None, copy_paths: CopyPaths = ALL_PATHS) -> None:
        self.job_id = job_id
        self.dirs = dirs or ExtraDirs()
        self.copy_paths = copy_paths
        self.policy = policy  # the destination export's: a same-host copy follows it like a network one
        self.limits = limits
        self.src = src
        self.dst_export = dst_export
        self.dst_rel = dst_rel
        self.options = options
        self.label = label
        self.cancel = cancel
        self.on_progress = on_progress
        self.nworkers = max(1, workers)
        self.work: queue.Queue[int] = queue.Queue(maxsize=1024)
        self.files: dict[int, Entry] = {}
        self.entries = self.files_total = self.bytes_total = 0
        self.skips = Skips(job_id)
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._last = 0.0
        self.writer: TreeWriter | None = None

    def run(self) -> TransferStats:
        root, missing = open_job_root(self.dst_export, self.dst_rel, self.options)
        self.writer = writer = make_writer(root, missing, self.options, self.label, self.job_id, policy=self.policy,
                                           limits=self.limits)
        try:
            attach_dirs(writer, self.dirs, self.label)
        except BaseException:
            root.close()
            raise
        threads = [threading.Thread(target=carry(self._worker), args=(writer,), name=f"zc-local-{i}", daemon=True)
                   for i in range(self.nworkers)]
        for t in threads:
            t.start()
        try:
            self._scan(writer)
        finally:
            for _ in threads:
                self.work.put(_STOP)
            for t in threads:
                t.join()
        try:
            return self._finish(writer)
        except BaseException:
            writer.abandon()
            raise
        finally:
            detach_dirs(writer)
            root.close()

    def _scan(self, writer: TreeWriter) -> None:
        """The source's entries into the writer; the files it needs to the copying workers."""
        scanner = Scanner(self.src, checksum=self.options.checksum, xattrs=self.options.xattrs,
                          on_skip=self.skips, filter=tree_filter(self.src, self.options.filters, self.label))
        for e in scanner.entries():
            if self.cancel.is_set() or self.errors:
                return
            index = self.entries
            self.entries += 1
            if index % 512 == 0:
                writer.end_batch()  # don't hold directory fds for long
            if writer.admit(e) and e.kind is Kind.FILE:
                self.files[index] = e
                self.files_total += 1
                self.bytes_total += e.size
                self.work.put(index)
            self._progress(writer)
        if not (self.cancel.is_set() or self.errors):
            writer.end_manifest(self.entries)

    def _finish(self, writer: TreeWriter) -> TransferStats:
        if self.cancel.is_set():
            raise Cancelled("cancelled by the controller")
        if self.errors:
            raise explain(self.errors[0]).error("local copy failed: ") from self.errors[0]
        writer.finish()
        if writer.flush is not None:  # the job's root may have been created with its parents
            sync_ancestors(self.dst_export, self.dst_rel, writer.flush.since_ns)
        stats = self._stats(writer, scan_done=True)
        self.on_progress(stats)
        return stats

    def _worker(self, writer: TreeWriter) -> None:
        priority.apply_to_this_thread()
        buf: list[bytearray] = []
        while True:
            index = self.work.get()
            if index == _STOP:
                return
            if self.cancel.is_set() or self.errors:
                continue
            try:
                self._copy(writer, index, self.files.pop(index), buf)
            except BaseException as err:
                with self._lock:
                    self.errors.append(err)

    def _copy(self, writer: TreeWriter, index: int, e: Entry, buf: list[bytearray]) -> None:
        try:
            fd = self.src.open_read(validate_relpath(e.path))
        except (OSError, UnsafePath) as err:
            slot = writer.slot(FileHead(index, 0, e.size, e.size, e.mtime_ns, e.mode))
            writer.range_done(slot, e.size, ok=False)
            source_trouble(self.skips, e.path, err)  # the rest of the tree is copied all the same
            return
        try:
            st = os.fstat(fd)
            slot = writer.slot(FileHead(index, 0, e.size, e.size, e.mtime_ns, st.st_mode & 0o7777))
            ok = as_scanned(st, e)
            try:
                if ok and slot.fd is not None:  # (no fd: the destination's trouble, recorded already)
                    ok = self._copy_data(fd, slot.fd, e, buf)
                    after = os.fstat(fd)
                    ok = ok and as_scanned(after, e)
            except BaseException:
                writer.range_broken(slot)
                raise
            writer.range_done(slot, e.size, ok=ok)
            if not ok:
                source_changed(self.skips, e.path)
        finally:
            os.close(fd)

    def _copy_data(self, src: int, dst: int, e: Entry, buf: list[bytearray]) -> bool:
        """Copy the file; for a sparse one only its data segments, so holes stay holes."""
        if not e.flags & F_SPARSE:
            return copy_range(src, dst, 0, e.size, buf, self.copy_paths) == e.size
        return all(copy_range(src, dst, off, n, buf, self.copy_paths) == n for off, n in data_segments(src, e.size))

    @property
    def plan(self) -> tuple[PlanItem, ...]:
        """A dry run's plan (the first items)."""
        return tuple(self.writer.items) if isinstance(self.writer, PlanWriter) else ()

    def _stats(self, writer: TreeWriter, scan_done: bool = False) -> TransferStats:
        w = writer.stats()
        if isinstance(writer, PlanWriter):
            return replace(w, entries=self.entries, files_total=self.files_total, bytes_total=self.bytes_total,
                           skipped_special=self.skips.special, scan_done=scan_done, entries_skipped=self.skips.total)
        return TransferStats(entries=self.entries, files_total=self.files_total, files_done=w.files_done,
                             bytes_total=self.bytes_total, bytes_done=w.bytes_done, files_skipped=w.files_skipped,
                             deleted=w.deleted, wire_bytes=0, skipped_special=self.skips.special, errors=w.errors,
                             scan_done=scan_done, entries_skipped=self.skips.total, file_errors=self.skips.errors,
                             linked=w.linked, backed_up=w.backed_up)

    def _progress(self, writer: TreeWriter) -> None:
        now = time.monotonic()
        if now - self._last >= 0.5:
            self._last = now
            self.on_progress(self._stats(writer))


def log_local(job_id: int, stats: TransferStats, seconds: float) -> None:
    log.info("local copy done", extra=kv(job=job_id, files=stats.files_done, bytes=stats.bytes_done,
                                         seconds=round(seconds, 3)))
