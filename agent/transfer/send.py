"""The sending side of one transfer attempt: scan, stream the manifest, sendfile what the receiver needs.

Two threads per connection: this one writes (manifest batches, then files as NEEDs arrive, so the scan
overlaps sending), a reader thread collects the receiver's NEED/RESULT/ABORT frames. File bytes go
from the page cache to the socket with ``os.sendfile`` and never enter Python.
"""

from __future__ import annotations

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

from zcrepl.agent.transfer import frame as fr
from zcrepl.agent.transfer.frame import Channel, Entry, FileHead, Hello, Kind
from zcrepl.agent.transfer.saferoot import SafeRoot, validate_relpath
from zcrepl.agent.transfer.scan import Scanner, log_skip
from zcrepl.core.errors import Cancelled, ProtocolError, TransferError, Unavailable, UnsafePath
from zcrepl.core.logs import kv
from zcrepl.core.types import JobOptions, TransferStats

log = logging.getLogger(__name__)

USE_SENDFILE = True  # tests switch it off to exercise the read+send fallback
CHUNK = 8 << 20
BATCH = 512
_DONE = -1


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
    """Job-wide bandwidth cap: sleeps so the average rate never exceeds ``rate`` bytes/s."""

    def __init__(self, rate: int, cancel: threading.Event) -> None:
        self.rate = rate
        self.cancel = cancel
        self.start = time.monotonic()
        self.sent = 0

    @property
    def chunk(self) -> int:
        return CHUNK if not self.rate else max(64 << 10, min(CHUNK, self.rate // 8))

    def account(self, n: int) -> None:
        self.sent += n
        if self.rate:
            ahead = self.sent / self.rate - (time.monotonic() - self.start)
            if ahead > 0:
                self.cancel.wait(ahead)


def sendfile_range(sock: socket.socket, fd: int, offset: int, count: int, timeout: float) -> int:
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
            if not poller.poll(timeout * 1000):
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


class Sender:
    def __init__(self, spec: SendSpec, root: SafeRoot) -> None:
        self.spec = spec
        self.root = root
        # Counters, each written by one thread only (writer or reader); snapshot() composes them.
        self.c_entries = self.c_files_done = self.c_bytes_done = self.c_errors = self.c_skipped_special = 0
        self.c_files_total = self.c_bytes_total = 0
        self.c_scan_done = False
        self.final: TransferStats | None = None
        self._asked: set[int] = set()
        self.paths: list[bytes | None] = []  # index -> relpath for files (None for others)
        self.sizes: dict[int, int] = {}  # index -> size at scan time, for progress totals
        self.needs: queue.Queue[int] = queue.Queue()
        self.result: dict[str, Any] | None = None
        self.peer_error: str | None = None
        self.pacer = Pacer(spec.options.bwlimit, spec.cancel)
        self._buf: bytearray | None = None
        self._use_sendfile = USE_SENDFILE
        self._last_progress = 0.0
        self._pending = 0

    # -- public -------------------------------------------------------------------------------------
    def run(self) -> TransferStats:
        spec = self.spec
        try:
            sock = socket.create_connection(spec.address, timeout=spec.connect_timeout)
        except OSError as err:
            raise Unavailable(
                f"cannot connect to the destination data port {spec.address[0]}:{spec.address[1]}: "
                f"{err.strerror or err}; check that the destination agent is running and reachable"
            ) from err
        cancel_watch = threading.Thread(target=self._close_on_cancel, args=(sock,), daemon=True)
        reader: threading.Thread | None = None
        try:
            sock.settimeout(spec.io_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            ch = Channel(sock)
            cancel_watch.start()
            ch.send(fr.encode_hello(Hello(spec.job_id, spec.attempt, spec.ticket)))
            kind, payload = ch.recv_frame(limit=65536)
            if kind is fr.T.REFUSE:
                raise ProtocolError(f"the destination refused the connection: {fr.decode_text(payload)}")
            if kind is not fr.T.ACCEPT:
                raise ProtocolError(f"expected ACCEPT, got {kind.name}")
            reader = threading.Thread(target=self._read_loop, args=(ch,), daemon=True, name="zc-send-reader")
            reader.start()
            self._stream(ch)
            reader.join(spec.io_timeout)
            if self.peer_error:
                raise TransferError(f"the destination aborted: {self.peer_error}")
            if self.result is None:
                raise ProtocolError("the destination closed the connection without a result")
            return self._merge_result(ch)
        except (OSError, TimeoutError) as err:
            if spec.cancel.is_set():
                raise Cancelled("cancelled") from err
            if self.peer_error:
                raise TransferError(f"the destination aborted: {self.peer_error}") from err
            raise TransferError(f"data connection failed: {err}") from err
        except TransferError:
            if spec.cancel.is_set():
                raise Cancelled("cancelled") from None
            raise
        finally:
            self._closed = True
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
            if reader is not None:
                reader.join(2)

    # -- writer -------------------------------------------------------------------------------------
    def _stream(self, ch: Channel) -> None:
        scanner = Scanner(self.root, checksum=self.spec.options.checksum, on_skip=self._skipped)
        batch: list[Entry] = []
        for entry in scanner.entries():
            self._check_cancel()
            if entry.kind is Kind.FILE:
                self.sizes[len(self.paths)] = entry.size
            self.paths.append(entry.path if entry.kind is Kind.FILE else None)
            batch.append(entry)
            self.c_entries += 1
            self._progress()
            if len(batch) >= BATCH:
                ch.send(fr.encode_entries(batch))
                batch = []
                self._drain_needs(ch, block=False)
        if batch:
            ch.send(fr.encode_entries(batch))
        ch.send(fr.encode_u64(fr.T.MANIFEST_END, len(self.paths)))
        self.c_scan_done = True
        self._drain_needs(ch, block=True)
        ch.send(fr.frame(fr.T.SENDER_DONE))
        self._progress(force=True)

    def _drain_needs(self, ch: Channel, *, block: bool) -> None:
        while True:
            try:
                index = self.needs.get(timeout=0.2) if block else self.needs.get_nowait()
            except queue.Empty:
                if not block:
                    return
                self._check_cancel()
                if self.peer_error or self.result is not None or self._reader_gone:
                    raise ProtocolError(f"the destination stopped before asking for every file: "
                                        f"{self.peer_error or 'connection closed'}") from None
                continue
            if index == _DONE:
                return
            self._send_file(ch, index)
            self._progress()

    def _send_file(self, ch: Channel, index: int) -> None:
        rel = self.paths[index]
        assert rel is not None
        try:
            fd = self.root.open_read(validate_relpath(rel))
        except (OSError, UnsafePath) as err:
            # Vanished or replaced since the scan: tell the receiver to drop it; the job reports it.
            log.warning("source file changed", extra=kv(job=self.spec.job_id, path=rel, error=err))
            ch.send(fr.encode_file(FileHead(index, 0, 0, 0)))
            ch.send(fr.frame(fr.T.FILE_END, bytes([fr.FILE_CHANGED])))
            self.c_errors += 1
            return
        try:
            st = os.fstat(fd)
            size = st.st_size
            ch.send(fr.encode_file(FileHead(index, size, st.st_mtime_ns, st.st_mode & 0o7777)))
            sent = self._send_range(ch, fd, size)
            status = fr.FILE_OK
            if sent < size:  # shrank while sending: pad to the announced size, then void it
                self._pad(ch, size - sent)
                status = fr.FILE_CHANGED
            after = os.fstat(fd)
            if after.st_size != size or after.st_mtime_ns != st.st_mtime_ns:
                status = fr.FILE_CHANGED
            ch.send(fr.frame(fr.T.FILE_END, bytes([status])))
            if status == fr.FILE_CHANGED:
                log.warning("source file changed while sent", extra=kv(job=self.spec.job_id, path=rel))
                self.c_errors += 1
            else:
                self.c_files_done += 1
        finally:
            os.close(fd)

    def _pad(self, ch: Channel, n: int) -> None:
        zero = bytes(1 << 20)
        while n > 0:
            k = min(n, len(zero))
            ch.send(zero[:k])
            n -= k

    def _send_range(self, ch: Channel, fd: int, size: int) -> int:
        off = 0
        while off < size:
            self._check_cancel()
            count = min(self.pacer.chunk, size - off)
            n = self._send_chunk(ch.sock, fd, off, count)
            ch.sent += n
            off += n
            self.c_bytes_done += n
            self.pacer.account(n)
            self._progress()
            if n < count:
                break
        return off

    def _send_chunk(self, sock: socket.socket, fd: int, off: int, count: int) -> int:
        if self._use_sendfile:
            try:
                return sendfile_range(sock, fd, off, count, self.spec.io_timeout)
            except OSError as err:
                # Only before the first byte may we switch paths (pyftpdlib's rule): a failure later
                # would leave the receiver with a half-sent range.
                if off != 0 or err.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                log.info("sendfile unavailable, using read+send", extra=kv(error=err.strerror))
                self._use_sendfile = False
        if self._buf is None:
            self._buf = bytearray(1 << 20)
        return readsend_range(sock, fd, off, count, self._buf)

    # -- reader -------------------------------------------------------------------------------------
    _reader_gone = False
    _closed = False

    def _read_loop(self, ch: Channel) -> None:
        try:
            while True:
                kind, payload = ch.recv_frame()
                if kind is fr.T.NEED:
                    for index in fr.decode_need(payload):
                        if index >= len(self.paths) or self.paths[index] is None or index in self._asked:
                            raise ProtocolError(f"NEED for index {index}, which is not a file we announced "
                                                "or was already asked for")
                        self._asked.add(index)
                        self.c_files_total += 1
                        self.c_bytes_total += self._size_hint(index)
                        self.needs.put(index)
                elif kind is fr.T.NEED_END:
                    self.needs.put(_DONE)
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
            self._reader_gone = True

    def _size_hint(self, index: int) -> int:
        return self.sizes.get(index, 0)

    # -- helpers ------------------------------------------------------------------------------------
    def snapshot(self) -> TransferStats:
        if self.final is not None:
            return self.final
        return TransferStats(
            entries=self.c_entries, files_total=self.c_files_total, files_done=self.c_files_done,
            bytes_total=self.c_bytes_total, bytes_done=self.c_bytes_done, errors=self.c_errors,
            skipped_special=self.c_skipped_special, scan_done=self.c_scan_done,
        )

    def _merge_result(self, ch: Channel) -> TransferStats:
        r = self.result or {}
        errors = int(r.get("errors", 0)) + self.c_errors
        self.final = replace(
            self.snapshot(),
            files_skipped=int(r.get("files_skipped", 0)),
            deleted=int(r.get("deleted", 0)),
            errors=errors,
            wire_bytes=ch.sent + ch.received,
        )
        self._progress(force=True)
        if r.get("error"):
            raise TransferError(str(r["error"]))
        if errors:
            first = r.get("first_error") or "a source file changed or vanished while it was sent"
            raise TransferError(f"{errors} entries failed; first: {first}")
        return self.final

    def _skipped(self, path: bytes, reason: str) -> None:
        log_skip(self.spec.job_id)(path, reason)
        self.c_skipped_special += 1

    def _check_cancel(self) -> None:
        if self.spec.cancel.is_set():
            raise Cancelled("cancelled by the controller")

    def _progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_progress >= self.spec.progress_interval:
            self._last_progress = now
            self.spec.on_progress(self.snapshot())

    def _close_on_cancel(self, sock: socket.socket) -> None:
        # Wakes a writer blocked in sendfile or a reader blocked in recv.
        while not self._closed:
            if self.spec.cancel.wait(0.5):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
