"""The sending side of one transfer attempt: scan, stream the manifest, send what the receiver needs.

The control connection carries the manifest (batches go out while the scan runs, so the first bytes
move before the scan ends) and brings back NEEDs; a reader thread turns NEEDs into work items. N data
connections, one worker thread each, send file ranges: small files whole, large files split into
ranges across connections. File bytes go from the page cache to the socket with ``os.sendfile`` and
never enter Python; per-file headers and trailers are coalesced and sent with MSG_MORE.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import queue
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from zcrepl.agent.transfer import delta
from zcrepl.agent.transfer import frame as fr
from zcrepl.agent.transfer.frame import Channel, Entry, FileHead, Hello, Kind
from zcrepl.agent.transfer.partial import intervals_digest, merge
from zcrepl.agent.transfer.saferoot import SafeRoot, validate_relpath
from zcrepl.agent.transfer.scan import Scanner, log_skip
from zcrepl.core.errors import Cancelled, ProtocolError, TransferError, Unavailable, UnsafePath
from zcrepl.core.logs import kv
from zcrepl.core.types import JobOptions, TransferStats

log = logging.getLogger(__name__)

USE_SENDFILE = True  # tests switch it off to exercise the read+send fallback
CHUNK = 8 << 20
BATCH = 512
SPLIT_MIN = 32 << 20  # files at least this big are split across data connections...
RANGE_MIN = 16 << 20  # ...into ranges of at least this size
_END = (-1, 0, 0)
_BASIS, _SPARSE = -1, -2  # work items other than plain ranges: (index, kind, 0)


@dataclass
class SendSpec:
    job_id: int
    attempt: int
    ticket: bytes
    address: tuple[str, int]
    options: JobOptions
    cancel: threading.Event
    on_progress: Callable[[TransferStats], None]
    connect_timeout: float = 10.0
    io_timeout: float = 60.0
    progress_interval: float = 0.5


class Pacer:
    """Job-wide bandwidth cap shared by all data connections: the average rate never exceeds ``rate``."""

    def __init__(self, rate: int, cancel: threading.Event) -> None:
        self.rate = rate
        self.cancel = cancel
        self.start = time.monotonic()
        self.sent = 0
        self._lock = threading.Lock()

    @property
    def chunk(self) -> int:
        return CHUNK if not self.rate else max(64 << 10, min(CHUNK, self.rate // 8))

    def account(self, n: int) -> None:
        if not self.rate:
            return
        with self._lock:
            self.sent += n
            ahead = self.sent / self.rate - (time.monotonic() - self.start)
        if ahead > 0:
            self.cancel.wait(ahead)


def sendfile_range(sock: socket.socket, fd: int, offset: int, count: int, timeout: float | None) -> int:
    """Send ``count`` bytes of ``fd`` from ``offset``; returns fewer only when the file ended early."""
    sockfd = sock.fileno()
    sent = 0
    poller: select.poll | None = None
    while sent < count:
        try:
            n = os.sendfile(sockfd, fd, offset + sent, count - sent)
        except BlockingIOError:
            if poller is None:
                poller = select.poll()
                poller.register(sockfd, select.POLLOUT)
            if not poller.poll(None if timeout is None else timeout * 1000):
                raise TimeoutError(f"peer accepted no data for {timeout:.0f}s") from None
            continue
        if n == 0:
            break
        sent += n
    return sent


def readsend_range(sock: socket.socket, fd: int, offset: int, count: int, buf: bytearray) -> int:
    """The slow path: pread into a reused buffer and sendall."""
    mv = memoryview(buf)
    sent = 0
    while sent < count:
        n = os.preadv(fd, [mv[: min(len(buf), count - sent)]], offset + sent)
        if n == 0:
            break
        sock.sendall(mv[:n])
        sent += n
    return sent


def connect(spec: SendSpec, hello: Hello) -> tuple[socket.socket, Channel, bytes]:
    """Open, authenticate, return (socket, channel, ACCEPT payload)."""
    try:
        sock = socket.create_connection(spec.address, timeout=spec.connect_timeout)
    except OSError as err:
        raise Unavailable(
            f"cannot connect to the destination data port {spec.address[0]}:{spec.address[1]}: "
            f"{err.strerror or err}; check that the destination agent is running and reachable"
        ) from err
    try:
        sock.settimeout(spec.io_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        ch = Channel(sock, bufsize=64 << 10)
        ch.send(fr.encode_hello(hello))
        kind, payload = ch.recv_frame(limit=4096)
        if kind is fr.T.REFUSE:
            raise ProtocolError(f"the destination refused the connection: {fr.decode_text(payload)}")
        if kind is not fr.T.ACCEPT:
            raise ProtocolError(f"expected ACCEPT, got {kind.name}")
        return sock, ch, payload
    except BaseException:
        sock.close()
        raise


class _Worker:
    """One data connection and the thread that feeds it."""

    def __init__(self, sender: Sender, sock: socket.socket, ch: Channel, n: int) -> None:
        self.sender = sender
        self.sock = sock
        self.ch = ch
        self.files_done = self.bytes_done = self.errors = 0
        self.error: BaseException | None = None
        self.pending = b""  # trailer of the previous file, sent together with the next header
        self.use_sendfile = USE_SENDFILE
        self.buf: bytearray | None = None
        self.thread = threading.Thread(target=self.run, name=f"zc-send-data-{n}", daemon=True)

    def run(self) -> None:
        s = self.sender
        try:
            while True:
                item = s.work.get()
                if item == _END:
                    break
                s.check_cancel()
                if item[1] == _BASIS:
                    self.send_basis(item[0])
                elif item[1] == _SPARSE:
                    self.send_sparse(item[0])
                else:
                    self.send_range(*item)
                s.progress()
            self.ch.send(self.pending + fr.frame(fr.T.DATA_DONE))
            self.pending = b""
        except BaseException as err:
            self.error = err
            s.record_failure(err)

    def send_range(self, index: int, offset: int, length: int) -> None:
        s = self.sender
        e = s.files[index]
        fd = self.open_source(index, offset, length, e)
        if fd is None:
            return
        try:
            st = os.fstat(fd)
            if self.send_piece(fd, st, index, offset, length, e) and s.range_finished(index):
                self.files_done += 1
        finally:
            os.close(fd)

    def open_source(self, index: int, offset: int, length: int, e: Entry) -> int | None:
        """The source file as scanned, or None after telling the receiver it changed or vanished."""
        s = self.sender
        try:
            fd = s.root.open_read(validate_relpath(e.path))
        except (OSError, UnsafePath) as err:
            log.warning("source file vanished", extra=kv(job=s.spec.job_id, path=e.path, error=err))
            self.skip(index, offset, length, e)
            return None
        st = os.fstat(fd)
        if st.st_size != e.size or st.st_mtime_ns != e.mtime_ns:
            os.close(fd)
            self.skip(index, offset, length, e)  # changed since the scan: the receiver drops it
            return None
        return fd

    def send_piece(self, fd: int, st: os.stat_result, index: int, offset: int, length: int, e: Entry) -> bool:
        """FILE header, the bytes by sendfile, FILE_END; False when the source changed meanwhile."""
        s = self.sender
        head = fr.encode_file(FileHead(index, offset, length, e.size, e.mtime_ns, st.st_mode & 0o7777))
        self.ch.sock.sendall(self.pending + head, socket.MSG_MORE)
        self.ch.sent += len(self.pending) + len(head)
        self.pending = b""
        sent = self.send_bytes(fd, offset, length)
        ok = sent == length
        if not ok:  # shrank while we read it: pad to the announced length, then void it
            self.pad(length - sent)
        after = os.fstat(fd)
        ok = ok and after.st_size == e.size and after.st_mtime_ns == e.mtime_ns
        self.pending = fr.FILE_END_OK if ok else fr.FILE_END_CHANGED
        if not ok:
            log.warning("source file changed while sent", extra=kv(job=s.spec.job_id, path=e.path))
            self.errors += 1
        return ok

    def send_basis(self, index: int) -> None:
        """Answer a NEED_BASIS: hash, then REUSE what the receiver already has and send only the rest."""
        s = self.sender
        e, b = s.files[index], s.bases[index]
        fd = self.open_source(index, 0, e.size, e)
        if fd is None:
            return
        try:
            st = os.fstat(fd)
            if self.buf is None:
                self.buf = bytearray(1 << 20)
            if b.kind == fr.BASIS_DELTA:
                mine, whole = delta.hash_blocks(fd, e.size, b.block, self.buf)
                pieces = delta.plan(b.hashes, mine, e.size, b.block)
            else:
                ivs = merge(list(b.intervals))
                valid = bool(ivs) and ivs[-1][0] + ivs[-1][1] <= e.size and list(b.intervals) == ivs
                if valid and intervals_digest(fd, ivs, self.buf) == b.digest:
                    pieces = sorted([(o, n, True) for o, n in ivs]
                                    + [(o, n, False) for o, n in delta.gaps(ivs, e.size)])
                else:
                    pieces = [(0, e.size, False)]
                whole = delta.hash_blocks(fd, e.size, delta.BLOCK_MAX, self.buf)[1]
            if not whole:
                self.skip(index, 0, e.size, e)
                return
            self.ch.send(self.pending + fr.encode_digest(index, whole))
            self.pending = b""
            ok = True
            for off, length, reuse in pieces:
                if reuse:
                    self.pending += fr.encode_file(FileHead(index, off, length, e.size, e.mtime_ns,
                                                            st.st_mode & 0o7777), fr.T.REUSE)
                    s.reused += length
                else:
                    ok = self.send_piece(fd, st, index, off, length, e) and ok
                s.check_cancel()
            if ok:
                self.files_done += 1
        finally:
            os.close(fd)

    def send_sparse(self, index: int) -> None:
        """Only the data segments of a sparse file travel (SEEK_DATA/SEEK_HOLE); holes go as HOLE."""
        s = self.sender
        e = s.files[index]
        fd = self.open_source(index, 0, e.size, e)
        if fd is None:
            return
        try:
            st = os.fstat(fd)
            ok, off = True, 0
            while off < e.size:
                try:
                    data = os.lseek(fd, off, os.SEEK_DATA)
                except OSError as err:
                    if err.errno != errno.ENXIO:
                        raise
                    data = e.size  # only a hole is left
                data = min(data, e.size)
                if data > off:
                    self.pending += fr.encode_file(FileHead(index, off, data - off, e.size, e.mtime_ns,
                                                            st.st_mode & 0o7777), fr.T.HOLE)
                if data >= e.size:
                    break
                end = min(os.lseek(fd, data, os.SEEK_HOLE), e.size)
                ok = self.send_piece(fd, st, index, data, end - data, e) and ok
                off = end
                s.check_cancel()
            if ok:
                self.files_done += 1
        finally:
            os.close(fd)

    def skip(self, index: int, offset: int, length: int, e: Entry) -> None:
        self.ch.send(self.pending + fr.encode_file(FileHead(index, offset, length, e.size, e.mtime_ns, e.mode),
                                                   fr.T.FILE_SKIP))
        self.pending = b""
        self.errors += 1

    def send_bytes(self, fd: int, offset: int, length: int) -> int:
        s = self.sender
        done = 0
        while done < length:
            s.check_cancel()
            count = min(s.pacer.chunk, length - done)
            n = self.send_chunk(fd, offset + done, count, first=done == 0)
            self.ch.sent += n
            self.bytes_done += n
            done += n
            s.pacer.account(n)
            s.progress()
            if n < count:
                break
        return done

    def send_chunk(self, fd: int, off: int, count: int, first: bool) -> int:
        if self.use_sendfile:
            try:
                return sendfile_range(self.sock, fd, off, count, self.sender.spec.io_timeout)
            except OSError as err:
                # Only before the first byte of a file may we switch paths (pyftpdlib's rule): a
                # failure later would leave the receiver with a half-sent range.
                if not first or err.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                log.info("sendfile unavailable, using read+send", extra=kv(error=err.strerror))
                self.use_sendfile = False
        if self.buf is None:
            self.buf = bytearray(1 << 20)
        return readsend_range(self.sock, fd, off, count, self.buf)

    def pad(self, n: int) -> None:
        zero = bytes(min(n, 1 << 20))
        while n > 0:
            k = min(n, len(zero))
            self.ch.send(zero[:k])
            n -= k


class Sender:
    def __init__(self, spec: SendSpec, root: SafeRoot) -> None:
        self.spec = spec
        self.root = root
        self.files: dict[int, Entry] = {}  # index -> file entry (only files can be asked for)
        self.work: queue.Queue[tuple[int, int, int]] = queue.Queue()
        self.failed = threading.Event()
        self.first_failure: BaseException | None = None
        self.result: dict[str, Any] | None = None
        self.peer_error: str | None = None
        self.pacer = Pacer(spec.options.bwlimit, spec.cancel)
        self.workers: list[_Worker] = []
        self._ranges_left: dict[int, int] = {}
        self._lock = threading.Lock()
        self._asked: set[int] = set()
        self.bases: dict[int, fr.Basis] = {}
        self.reused = 0  # bytes the receiver took from its basis instead of the wire
        self._socks: list[socket.socket] = []
        self._closed = False
        self._reader_gone = threading.Event()
        self._last_progress = 0.0
        # Written by one thread each (scan: writer; totals: reader); snapshot() composes them.
        self.c_entries = self.c_skipped_special = 0
        self.c_files_total = self.c_bytes_total = 0
        self.c_scan_done = False
        self.final: TransferStats | None = None

    # -- public -------------------------------------------------------------------------------------
    def run(self) -> TransferStats:
        spec = self.spec
        streams = max(1, min(spec.options.streams or 1, fr.MAX_STREAMS))
        cancel_watch = threading.Thread(target=self._close_on_cancel, daemon=True, name="zc-send-cancel")
        reader: threading.Thread | None = None
        try:
            sock, ctl, accept = connect(spec, Hello(spec.job_id, spec.attempt, spec.ticket, fr.ROLE_CONTROL,
                                                    streams))
            self._socks.append(sock)
            cancel_watch.start()
            for i, ticket in enumerate(fr.decode_accept(accept)):
                dsock, dch, _ = connect(spec, Hello(spec.job_id, spec.attempt, ticket, fr.ROLE_DATA, 0))
                self._socks.append(dsock)
                self.workers.append(_Worker(self, dsock, dch, i))
            if not self.workers:
                raise ProtocolError("the destination granted no data connection")
            reader = threading.Thread(target=self._read_loop, args=(ctl,), daemon=True, name="zc-send-reader")
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
            self._closed = True
            for sk in self._socks:
                with contextlib.suppress(OSError):
                    sk.shutdown(socket.SHUT_RDWR)
                sk.close()
            for w in self.workers:
                if w.thread.is_alive():
                    self.work.put(_END)
            for w in self.workers:
                if w.thread.ident is not None:
                    w.thread.join(5)
            if reader is not None:
                reader.join(5)
            if cancel_watch.ident is not None:
                cancel_watch.join(5)

    def _explain(self, err: BaseException) -> TransferError:
        if self.spec.cancel.is_set():
            return Cancelled("cancelled")
        if self.peer_error:
            return TransferError(f"the destination aborted: {self.peer_error}")
        return TransferError(f"data connection failed: {err}")

    # -- control: manifest out ----------------------------------------------------------------------
    def _stream(self, ctl: Channel) -> None:
        scanner = Scanner(self.root, checksum=self.spec.options.checksum, xattrs=self.spec.options.xattrs,
                          on_skip=self._skipped)
        batch: list[Entry] = []
        index = 0
        for entry in scanner.entries():
            self.check_cancel()
            if entry.kind is Kind.FILE:
                self.files[index] = entry
            index += 1
            batch.append(entry)
            self.c_entries = index
            if len(batch) >= BATCH:
                ctl.send(fr.encode_entries(batch))
                batch = []
                self.progress()
        if batch:
            ctl.send(fr.encode_entries(batch))
        ctl.send(fr.encode_u64(fr.T.MANIFEST_END, index))
        self.c_scan_done = True
        self.progress(force=True)

    def _join_workers(self) -> None:
        for w in self.workers:
            while w.thread.is_alive():
                w.thread.join(0.2)
                self.check_cancel()
                if self.peer_error or (self._reader_gone.is_set() and self.result is None):
                    raise ProtocolError(f"the destination stopped: {self.peer_error or 'connection closed'}")
        first = self.first_failure
        if first is not None:
            if isinstance(first, OSError | TimeoutError):
                raise self._explain(first) from first
            raise first

    # -- control: NEEDs in --------------------------------------------------------------------------
    def _read_loop(self, ctl: Channel) -> None:
        try:
            while True:
                kind, payload = ctl.recv_frame()
                if kind is fr.T.NEED:
                    for index in fr.decode_need(payload):
                        self._queue_file(index)
                elif kind is fr.T.NEED_BASIS:
                    basis = fr.decode_basis(payload)
                    self._queue_file(basis.index, basis)
                elif kind is fr.T.NEED_END:
                    for _ in self.workers:
                        self.work.put(_END)
                elif kind is fr.T.RESULT:
                    self.result = json.loads(payload)
                    return
                elif kind is fr.T.ABORT:
                    self.peer_error = fr.decode_text(payload)
                    return
                else:
                    raise ProtocolError(f"unexpected {kind.name} from the destination")
        except (OSError, ProtocolError, ValueError) as err:
            if not self._closed and not self.spec.cancel.is_set() and self.peer_error is None:
                self.peer_error = str(err)
        finally:
            self._reader_gone.set()
            if self.peer_error:
                self.failed.set()

    def _queue_file(self, index: int, basis: fr.Basis | None = None) -> None:
        e = self.files.get(index)
        if e is None or index in self._asked:
            raise ProtocolError(f"NEED for index {index}, which is not a file we announced or was asked already")
        self._asked.add(index)
        self.c_files_total += 1
        self.c_bytes_total += e.size
        if basis is not None:
            self.bases[index] = basis
            self.work.put((index, _BASIS, 0))
            return
        if e.flags & fr.F_SPARSE:
            self.work.put((index, _SPARSE, 0))
            return
        n = len(self.workers)
        if n > 1 and e.size >= SPLIT_MIN:
            parts = min(n, e.size // RANGE_MIN)
            step = -(-e.size // parts)
            step = -(-step // (1 << 20)) * (1 << 20)  # 1 MiB aligned
            ranges = [(off, min(step, e.size - off)) for off in range(0, e.size, step)]
        else:
            ranges = [(0, e.size)]
        with self._lock:
            self._ranges_left[index] = len(ranges)
        for off, length in ranges:
            self.work.put((index, off, length))

    def range_finished(self, index: int) -> bool:
        with self._lock:
            self._ranges_left[index] -= 1
            return self._ranges_left[index] == 0

    # -- helpers ------------------------------------------------------------------------------------
    def snapshot(self) -> TransferStats:
        if self.final is not None:
            return self.final
        return TransferStats(
            entries=self.c_entries, files_total=self.c_files_total, bytes_total=self.c_bytes_total,
            files_done=sum(w.files_done for w in self.workers), bytes_done=sum(w.bytes_done for w in self.workers),
            errors=sum(w.errors for w in self.workers), skipped_special=self.c_skipped_special,
            scan_done=self.c_scan_done,
        )

    def _merge_result(self, ctl: Channel) -> TransferStats:
        r = self.result or {}
        snap = self.snapshot()
        errors = int(r.get("errors", 0)) + snap.errors
        wire = ctl.sent + ctl.received + sum(w.ch.sent + w.ch.received for w in self.workers)
        self.final = replace(snap, files_skipped=int(r.get("files_skipped", 0)), deleted=int(r.get("deleted", 0)),
                             errors=errors, wire_bytes=wire)
        self.progress(force=True)
        if errors:
            first = r.get("first_error") or "a source file changed or vanished while it was sent"
            raise TransferError(f"{errors} entries failed; first: {first}")
        return self.final

    def _skipped(self, path: bytes, reason: str) -> None:
        log_skip(self.spec.job_id)(path, reason)
        self.c_skipped_special += 1

    def record_failure(self, err: BaseException) -> None:
        with self._lock:
            if self.first_failure is None:
                self.first_failure = err
        self.failed.set()

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

    def _close_on_cancel(self) -> None:
        # On cancel or on the first failure, wake writers blocked in sendfile and the reader in recv.
        while not self._closed:
            if self.spec.cancel.wait(0.2) or self.failed.is_set():
                for sk in list(self._socks):
                    with contextlib.suppress(OSError):
                        sk.shutdown(socket.SHUT_RDWR)
                return
