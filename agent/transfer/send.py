"""The sending side of one transfer attempt: scan, stream the manifest, send what the receiver needs.

The control connection carries the manifest (batches go out while the scan runs, so the first bytes
move before the scan ends) and brings back NEEDs; a reader thread turns NEEDs into work items. N data
connections, one ``DataWorker`` thread each, send file ranges: small files whole, large files split
into ranges across connections. File bytes go from the page cache to the socket with ``os.sendfile``
and never enter Python, except a small file's (``send_worker.SMALL``): it is read whole, with its header and
trailer, into the connection's output buffer, which goes out in one send per ``FLUSH`` bytes (a header send,
a sendfile and a trailer per 4 KiB file cost more than the copy they avoid). An encrypted
attempt (``SendSpec.encrypt``) runs every connection over TLS 1.3 and sends file bytes as ``tls.py`` says.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import replace

from zcrepl.agent.transfer import entrycodec as ec
from zcrepl.agent.transfer import frame as fr
from zcrepl.agent.transfer import opsframe as opf
from zcrepl.agent.transfer import window
from zcrepl.agent.transfer.changes import ChangePlan, restricted_manifest
from zcrepl.agent.transfer.channel import Channel, Stream, shut
from zcrepl.agent.transfer.failure import explain
from zcrepl.agent.transfer.frame import Entry, Hello
from zcrepl.agent.transfer.peer import KTLS, NONE, TLS
from zcrepl.agent.transfer.saferoot import SafeRoot
from zcrepl.agent.transfer.scan import Scanner, Skips, source_changed, source_trouble, tree_filter
from zcrepl.agent.transfer.send_worker import END, DataWorker, Work, WorkItem
from zcrepl.agent.transfer.sendio import Pacer, SendSpec, connect
from zcrepl.agent.transfer.window import FileWindow
from zcrepl.core.errors import Cancelled, ProtocolError, TransferError, Unavailable
from zcrepl.core.logs import carry
from zcrepl.core.paths import show
from zcrepl.core.types import TransferStats

log = logging.getLogger(__name__)

SPLIT_MIN = 32 << 20  # files at least this big are split across data connections...
RANGE_MIN = 16 << 20  # ...into ranges of at least this size
__all__ = ["RANGE_MIN", "SPLIT_MIN", "SendSpec", "Sender"]


class Sender:
    """One transfer attempt: the whole tree, or (``plan``) one watch session's changes.

    A source file that cannot be read when its bytes are due, or that changes while it is sent, does not fail
    the attempt: it is reported (``skips``, see ``scan.source_trouble``) and the rest of the tree is sent. With
    ``plan`` (or ``tolerate_changed``) a file that changed or vanished is not even reported: the watcher saw
    that change too and ships the file again in a later session.
    """

    def __init__(self, spec: SendSpec, root: SafeRoot, plan: ChangePlan | None = None,
                 tolerate_changed: bool = False) -> None:
        self.spec = spec
        self.root = root
        self.plan = plan
        self.tolerate_changed = tolerate_changed or plan is not None
        self._restricted: list[Entry] | None = None
        self.renamed_missed = 0
        self.files = FileWindow()  # batches announced and not yet decided, files asked for and not yet sent
        self.failed = threading.Event()
        self.first_failure: BaseException | None = None
        self.result: fr.Result | None = None
        self.peer_error: str | None = None
        self.pacer = Pacer(spec.options.bwlimit, spec.cancel)
        self.workers: list[DataWorker] = []
        self._ranges_left: dict[int, int] = {}
        self._lock = threading.Lock()
        self.bases: dict[int, fr.Basis] = {}
        self.hinted: dict[int, tuple[int, threading.Event]] = {}  # index -> (block, receiver hashes arrived)
        self._socks: list[Stream] = []
        self.transport = NONE
        self.controlled = False  # the receiver accepted the control connection (something may have started)
        self._closed = False
        self._reader_gone = threading.Event()
        # Set whenever the main thread may have something to act on: a worker finished, the reader stopped, a
        # failure or a cancel. It waits on this, never on a timer.
        self._changed = threading.Event()
        self._unhook: Callable[[], None] = lambda: None
        self._last_progress = 0.0
        # Written by one thread each (scan: writer; totals: reader); snapshot() composes them.
        self.c_entries = 0
        self.skips = Skips(spec.job_id)  # what the scan left out (counted, the first ones named)
        self.c_files_total = self.c_bytes_total = 0
        self.c_scan_done = False
        self.final: TransferStats | None = None
        self._troubled: set[int] = set()  # indices reported by source_trouble/source_changed (once each)
        self.renamed = 0

    # -- public -------------------------------------------------------------------------------------
    def run(self) -> TransferStats:
        spec = self.spec
        reader: threading.Thread | None = None
        try:
            ctl = self._open()
            if self.plan is not None:
                self._restricted = self._changes(ctl)
            reader = threading.Thread(target=carry(self._read_loop), args=(ctl,), daemon=True,
                                      name="zc-send-reader")
            reader.start()
            for w in self.workers:
                w.thread.start()
            self._stream(ctl)
            self._join_workers()
            ctl.send(fr.frame(fr.T.SENDER_DONE))
            reader.join(spec.io_timeout)
            if self.peer_error:
                raise TransferError(f"the destination aborted: {self.peer_error}")
            if self.result is None:
                raise ProtocolError("the destination closed the connection without a result")
            return self._merge_result(ctl)
        except (OSError, TimeoutError) as err:
            raise self._explain(err) from err
        except TransferError as err:
            if spec.cancel.is_set():
                raise Cancelled("cancelled") from None
            if self.peer_error and not isinstance(err, Unavailable):
                raise TransferError(f"the destination aborted: {self.peer_error}") from err
            raise
        finally:
            self._close(reader)

    def _open(self) -> Channel:
        """The handshake: the control connection, then the data connections the destination granted."""
        spec = self.spec
        streams = max(1, min(spec.options.streams or 1, fr.MAX_STREAMS))
        sock, ctl, accept = connect(spec, Hello(spec.job_id, spec.attempt, spec.ticket, fr.ConnRole.CONTROL, streams))
        self._socks.append(sock)
        self.controlled = True
        self._unhook = spec.cancel.on_set(self._wake)
        for i, ticket in enumerate(fr.decode_accept(accept)):
            dsock, dch, _ = connect(spec, Hello(spec.job_id, spec.attempt, ticket, fr.ConnRole.DATA, 0))
            self._socks.append(dsock)
            self.workers.append(DataWorker(self, dsock, dch, i))
        if not self.workers:
            raise ProtocolError("the destination granted no data connection")
        if spec.encrypt:
            self.transport = KTLS if all(w.tls is not None and w.tls.ktls for w in self.workers) else TLS
        return ctl

    def _close(self, reader: threading.Thread | None) -> None:
        self._closed = True
        self._unhook()
        for sk in self._socks:
            shut(sk)
            sk.close()
        for w in self.workers:
            if w.thread.is_alive():
                w.work.put(END)
        for w in self.workers:
            if w.thread.ident is not None:
                w.thread.join(5)
        if reader is not None:
            reader.join(5)

    def _explain(self, err: BaseException) -> TransferError:
        if self.spec.cancel.is_set():
            return Cancelled("cancelled")
        if self.peer_error:
            return TransferError(f"the destination aborted: {self.peer_error}")
        between = f"this agent and {self.spec.dest or self.spec.address[0]}"
        return explain(err, io_timeout=self.spec.io_timeout, between=between).error("data connection failed: ")

    # -- control: manifest out ----------------------------------------------------------------------
    def _changes(self, ctl: Channel) -> list[Entry]:
        """The CHANGES rounds of a watch session; returns the restricted manifest to stream."""
        assert self.plan is not None
        scanner = self._scanner(hardlinks=False)
        missed = self._round(ctl, self.plan.ops(), {b for _, b in self.plan.renames})
        self.renamed_missed = len(missed)
        entries, gone = restricted_manifest(scanner, self.plan.upserts | missed, missed)
        if gone:
            self._round(ctl, [opf.Op(opf.OP_DELETE, p) for p in gone], set())
        return entries

    def _scanner(self, hardlinks: bool) -> Scanner:
        o = self.spec.options
        flt = tree_filter(self.root, o.filters, show(self.root.path))
        return Scanner(self.root, checksum=o.checksum, xattrs=o.xattrs, on_skip=self.skips, hardlinks=hardlinks,
                       filter=flt)

    def _round(self, ctl: Channel, ops: list[opf.Op], targets: set[bytes]) -> set[bytes]:
        for f in opf.op_batches(ops, fr.T.CHANGES):
            ctl.send(f)
        ctl.send(fr.frame(fr.T.CHANGES_END))
        missed: set[bytes] = set()
        while True:
            kind, payload = ctl.recv_frame()
            if kind is fr.T.MISSED:
                for op in opf.decode_ops(payload, (opf.OP_MISSED,)):
                    if op.path not in targets:
                        raise ProtocolError("MISSED names a path that was not a rename target")
                    missed.add(op.path)
            elif kind is fr.T.CHANGES_ACK:
                return missed
            elif kind is fr.T.ABORT:
                self.peer_error = fr.decode_text(payload)
                raise TransferError(f"the destination aborted: {self.peer_error}")
            else:
                raise ProtocolError(f"unexpected {kind.name} from the destination while it applied changes")

    def _stream(self, ctl: Channel) -> None:
        size = window.BATCH
        if self._restricted is not None:
            r = self._restricted
            source: Iterable[list[Entry]] = (r[i : i + size] for i in range(0, len(r), size))
        else:
            source = self._scanner(hardlinks=True).chunks()
        batch: list[Entry] = []
        index = 0
        cancel, failed = self.spec.cancel, self.failed
        for chunk in source:  # a list of entries at a time: nothing below is done per entry
            if cancel.is_set() or failed.is_set():
                self.check_cancel()
            batch += chunk
            while len(batch) >= size:
                index += size
                self._send_batch(ctl, batch[:size], index)
                del batch[:size]
                self.progress()
                self.files.wait_room(self.check_cancel)  # the receiver decides, the workers send
        if batch:
            index += len(batch)
            self._send_batch(ctl, batch, index)
        ctl.send(fr.encode_u64(fr.T.MANIFEST_END, index))
        self.c_scan_done = True
        self.progress(force=True)

    def _send_batch(self, ctl: Channel, batch: list[Entry], end: int) -> None:
        self.files.announce_batch(end - len(batch), batch)  # before the receiver can NEED any of them
        self.c_entries = end
        ctl.send(ec.encode_entries(batch))

    def _join_workers(self) -> None:
        while True:
            self._changed.clear()  # before the checks: a change after them still ends the wait below
            self.check_cancel()
            if self.peer_error or (self._reader_gone.is_set() and self.result is None):
                raise ProtocolError(f"the destination stopped: {self.peer_error or 'connection closed'}")
            if all(w.finished.is_set() for w in self.workers):
                break
            self._changed.wait()
        for w in self.workers:
            w.thread.join()
        first = self.first_failure
        if first is not None:
            if isinstance(first, OSError | TimeoutError):
                raise self._explain(first) from first
            raise first

    # -- control: NEEDs in --------------------------------------------------------------------------
    def _read_loop(self, ctl: Channel) -> None:
        """The destination's answers, one handler per frame type, until RESULT or ABORT."""
        handlers: dict[fr.T, Callable[[bytes], bool]] = {
            fr.T.NEED: self._on_need, fr.T.BASIS_HINT: self._on_hint, fr.T.NEED_BASIS: self._on_need_basis,
            fr.T.NEED_END: self._on_need_end, fr.T.RESULT: self._on_result, fr.T.ABORT: self._on_abort,
            fr.T.MANIFEST_ACK: self._on_manifest_ack,
        }
        try:
            while True:
                kind, payload = ctl.recv_frame()
                handler = handlers.get(kind)
                if handler is None:
                    raise ProtocolError(f"unexpected {kind.name} from the destination")
                if handler(payload):
                    return
        except (OSError, ProtocolError, ValueError) as err:
            if not self._closed and not self.spec.cancel.is_set() and self.peer_error is None:
                self.peer_error = str(err)
        finally:
            self._reader_gone.set()
            for _, hashes in list(self.hinted.values()):
                hashes.set()  # nobody else would: a worker waiting for them checks why it woke
            if self.peer_error:
                self.failed.set()
                self._wake()
            self._changed.set()

    # Each returns True when the destination has said its last word.
    def _on_need(self, payload: bytes) -> bool:
        # One put per data connection per NEED frame, not one per file: a queue put may wake its worker.
        planned: dict[int, list[WorkItem]] = {}
        for index in fr.decode_need(payload):
            self._plan_file(index, None, planned)
        for k, items in planned.items():
            self.workers[k].work.put(items)
        return False

    def _on_hint(self, payload: bytes) -> bool:
        index, block = fr.decode_hint(payload)
        self.hinted[index] = (block, threading.Event())
        self._queue_file(index, fr.Basis(index, fr.BasisKind.DELTA, block))
        return False

    def _on_need_basis(self, payload: bytes) -> bool:
        basis = fr.decode_basis(payload)
        hint = self.hinted.get(basis.index)
        if hint is None:
            self._queue_file(basis.index, basis)
        elif basis.kind != fr.BasisKind.DELTA or hint[1].is_set():
            raise ProtocolError(f"NEED_BASIS for index {basis.index} disagrees with its hint")
        else:  # the worker already hashing this file picks the receiver's hashes up here
            self.bases[basis.index] = basis
            hint[1].set()
        return False

    def _on_manifest_ack(self, payload: bytes) -> bool:
        self.files.decided(fr.decode_u64(payload, "MANIFEST_ACK"), self.c_entries)
        return False

    def _on_need_end(self, _payload: bytes) -> bool:
        for w in self.workers:
            w.work.put(END)
        return False

    def _on_result(self, payload: bytes) -> bool:
        self.result = fr.decode_result(payload)
        return True

    def _on_abort(self, payload: bytes) -> bool:
        self.peer_error = fr.decode_text(payload)
        return True

    def _queue_file(self, index: int, basis: fr.Basis | None = None) -> None:
        planned: dict[int, list[WorkItem]] = {}
        self._plan_file(index, basis, planned)
        for k, items in planned.items():
            self.workers[k].work.put(items)

    def _plan_file(self, index: int, basis: fr.Basis | None, planned: dict[int, list[WorkItem]]) -> None:
        """The work items that send file ``index``, added to ``planned`` (data connection -> its items)."""
        e = self.files.ask(index)
        self.c_files_total += 1
        self.c_bytes_total += e.size
        n = len(self.workers)
        # Files of one directory go to one connection: creating files in a directory takes its lock in
        # the receiving kernel, so connections working on different directories create in parallel.
        home = zlib.crc32(e.path.rpartition(b"/")[0]) % n if n > 1 else 0
        if basis is not None:
            self.bases[index] = basis
            planned.setdefault(home, []).append(WorkItem(Work.BASIS, index))
            return
        if e.flags & fr.F_SPARSE:
            planned.setdefault(home, []).append(WorkItem(Work.SPARSE, index))
            return
        if n == 1 or e.size < SPLIT_MIN:
            planned.setdefault(home, []).append(WorkItem(Work.RANGE, index, 0, e.size))
            return
        parts = min(n, e.size // RANGE_MIN)
        step = -(-e.size // parts)
        step = -(-step // (1 << 20)) * (1 << 20)  # 1 MiB aligned
        ranges = [(off, min(step, e.size - off)) for off in range(0, e.size, step)]
        if len(ranges) > 1:  # a file sent whole needs no count: its one item is its last
            with self._lock:
                self._ranges_left[index] = len(ranges)
            self.files.expect(index, len(ranges))
        for k, (off, length) in enumerate(ranges):  # one range per connection
            planned.setdefault((index + k) % n, []).append(WorkItem(Work.RANGE, index, off, length))

    def range_finished(self, index: int) -> bool:
        """A range of file ``index`` was sent whole; True when it was the file's last."""
        with self._lock:
            left = self._ranges_left.get(index)
            if left is None:
                return True
            self._ranges_left[index] = left - 1
            return left == 1

    def item_done(self, index: int) -> None:
        """A data worker finished one work item of file ``index`` (sent, skipped or failed): after the last,
        nothing of the file is kept (a hint still waiting for its NEED_BASIS stays, to match it)."""
        if self.files.item_done(index):
            if index in self._ranges_left:
                with self._lock:
                    self._ranges_left.pop(index, None)
            self.bases.pop(index, None)
            hint = self.hinted.get(index)
            if hint is not None and hint[1].is_set():
                del self.hinted[index]

    # -- helpers ------------------------------------------------------------------------------------
    def snapshot(self) -> TransferStats:
        if self.final is not None:
            return self.final
        return TransferStats(
            entries=self.c_entries, files_total=self.c_files_total, bytes_total=self.c_bytes_total,
            files_done=sum(w.files_done for w in self.workers), bytes_done=sum(w.bytes_done for w in self.workers),
            skipped_special=self.skips.special, scan_done=self.c_scan_done, entries_skipped=self.skips.total,
            transport=self.transport, file_errors=self.skips.errors,
        )

    def _merge_result(self, ctl: Channel) -> TransferStats:
        r = self.result or fr.Result()
        snap = self.snapshot()
        self.renamed = r.renamed
        wire = ctl.sent + ctl.received + sum(w.ch.sent + w.ch.received for w in self.workers)
        # errors are the destination's: it could not write what it was sent
        # No last progress report: the DONE (or FAILED) report that follows carries these totals, and one more
        # report would cost the controller a notify and every watcher a snapshot right before the final one.
        self.final = replace(snap, files_skipped=r.files_skipped, deleted=r.deleted, errors=r.errors, wire_bytes=wire)
        if r.errors:
            raise TransferError(f"{r.errors} entries failed; first: {r.first_error or 'see its log'}")
        return self.final

    def source_trouble(self, index: int, path: bytes, err: BaseException) -> None:
        """File ``index`` could not be opened for sending (called by data workers; once per file)."""
        if self._first_trouble(index):
            source_trouble(self.skips, path, err, watch=self.tolerate_changed)

    def source_changed(self, index: int, path: bytes) -> None:
        if self._first_trouble(index):
            source_changed(self.skips, path, watch=self.tolerate_changed)

    def _first_trouble(self, index: int) -> bool:
        with self._lock:  # a file split in ranges may be found out by several connections
            first = index not in self._troubled
            self._troubled.add(index)
            return first

    def record_failure(self, err: BaseException) -> None:
        with self._lock:
            if self.first_failure is None:
                self.first_failure = err
        self.failed.set()
        self._wake()

    def worker_finished(self) -> None:
        self._changed.set()

    def check_cancel(self) -> None:
        """Stop early when cancelled, or when any part of this attempt already failed."""
        if self.spec.cancel.is_set():
            raise Cancelled("cancelled by the controller")
        if self.failed.is_set():
            raise TransferError(self.peer_error or "another data connection failed")

    def progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_progress >= self.spec.progress_interval:
            self._last_progress = now
            self.spec.on_progress(self.snapshot())

    def _wake(self) -> None:
        """On cancel or on the first failure: wake writers blocked in sendfile and the reader in recv (shut
        sockets), a worker waiting for the receiver's hashes, a paced or paused writer, and the main thread."""
        for sk in list(self._socks):
            shut(sk)
        for _, hashes in list(self.hinted.values()):
            hashes.set()
        self.pacer.wake()
        self.files.wake()  # a scan waiting for room in its window
        self._changed.set()
