"""The receiving side of one transfer attempt on the network: a control connection and data connections.

The control connection carries the manifest (admitted and diffed by ``TreeWriter`` as it arrives) and
the NEEDs back; data connections carry file ranges. Bytes go from the socket to the temp file through
``os.splice`` (socket -> pipe -> file, no user-space copy) or, as the tested fallback, one
``recv_into`` a reused buffer + ``pwrite``. An encrypted connection always takes the second path: splice would
move the ciphertext.

Data tickets are bound like the controller's: to the source agent, from the address its control connection
came from, and encrypted when that connection was.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import secrets
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from zcrepl.agent.transfer import frame as fr
from zcrepl.agent.transfer.apply import TreeWriter
from zcrepl.agent.transfer.channel import ZERO_COPY, Channel, ZeroCopy, shut, wait_ready
from zcrepl.agent.transfer.compress import Unpacker
from zcrepl.agent.transfer.fileslot import FileSlot
from zcrepl.agent.transfer.flush import JobFlush, start_writeback, sync_ancestors
from zcrepl.agent.transfer.frame import FileHead, Hello
from zcrepl.agent.transfer.jobdirs import ExtraDirs, attach_dirs, detach_dirs
from zcrepl.agent.transfer.limits import SessionLimits
from zcrepl.agent.transfer.peer import NONE, Binding
from zcrepl.agent.transfer.plan import make_writer, open_job_root
from zcrepl.agent.transfer.receive_control import FILE_FRAMES, ControlSession
from zcrepl.agent.transfer.saferoot import SafeRoot
from zcrepl.agent.transfer.server import Grant, TicketBook
from zcrepl.core.errors import ProtocolError, TransferError
from zcrepl.core.exportpolicy import DEFAULT_POLICY, ExportPolicy
from zcrepl.core.types import JobOptions, TransferStats

_FILE_ENDS = frozenset(fr.FileEnd)
log = logging.getLogger(__name__)

_F_SETPIPE_SZ = 1031
_PIPE = 1 << 20
_BUF = 1 << 20
DATA_TICKET_TTL = 60.0
DATA_WAIT = 120.0
WRITEBACK_STEP = 8 << 20
FLUSH_STEP = 32 << 20  # job durability: a big file is flushed in steps of this size as it arrives (flush.py)


@dataclass
class ReceiveSpec:
    job_id: int
    attempt: int
    export: SafeRoot
    rel: tuple[bytes, ...]  # job root below the export
    options: JobOptions
    label: str  # "hostB:/backup/data", for messages
    on_progress: Callable[[TransferStats], None] = field(default=lambda _s: None)
    policy: ExportPolicy = DEFAULT_POLICY  # the export's: what the peer may decide about ownership and xattrs
    limits: SessionLimits = field(default_factory=SessionLimits)
    bind: Binding = field(default_factory=Binding)  # whom the controller's ticket was for; the data tickets inherit it
    dirs: ExtraDirs = field(default_factory=ExtraDirs)  # --backup-dir and --link-dest, resolved
    zero_copy: ZeroCopy = ZERO_COPY


class ReceiveSession:
    """One attempt on the receiving agent. ``serve_control`` runs on the control connection's thread;
    each data connection runs ``_serve_data`` on its own thread; both write through one TreeWriter."""

    def __init__(self, spec: ReceiveSpec, tickets: TicketBook) -> None:
        self.spec = spec
        self.tickets = tickets
        self.writer: TreeWriter | None = None
        self._lock = threading.Lock()
        self._data: dict[Channel, bool] = {}  # data channel -> finished
        self._data_cv = threading.Condition(self._lock)
        self._error: BaseException | None = None
        self._control: Channel | None = None
        self.transport = NONE

    # -- control ------------------------------------------------------------------------------------
    def serve_control(self, ch: Channel, hello: Hello) -> TransferStats:
        spec = self.spec
        self._control = ch
        bind = spec.bind if ch.peer is None else spec.bind.narrowed(ch.peer)
        self.transport = ch.peer.transport if ch.peer is not None else NONE
        root, missing = open_job_root(spec.export, spec.rel, spec.options)
        self.writer = writer = make_writer(root, missing, spec.options, spec.label, spec.job_id, policy=spec.policy,
                                           limits=spec.limits)
        data_tickets: list[bytes] = []
        try:
            attach_dirs(writer, spec.dirs, spec.label)
            streams = max(1, min(hello.streams, fr.MAX_STREAMS))  # the peer asks; we clamp
            data_tickets = [secrets.token_bytes(fr.TICKET_LEN) for _ in range(streams)]
            expires = time.monotonic() + DATA_TICKET_TTL
            for t in data_tickets:
                self.tickets.register(t, Grant(spec.job_id, spec.attempt, expires, self._serve_data,
                                               role=fr.ConnRole.DATA, bind=bind))
            ch.send(fr.encode_accept(data_tickets))
            result = self._control_loop(ch, writer)
            if writer.flush is not None:  # the job's root may have been created with its parents
                sync_ancestors(spec.export, spec.rel, writer.flush.since_ns)
            ch.send(fr.encode_result(result))
            return self.stats()
        except BaseException as err:
            with self._lock:
                self._error = self._error or err
            self._abort_data()
            writer.abandon()
            if self._error is not err and isinstance(self._error, Exception):
                raise self._error from err  # a data connection failed first: that is the cause
            raise
        finally:
            # Only our own: a watch rule's next session shares (job, attempt) and may have registered its
            # data tickets already.
            self.tickets.discard(data_tickets)
            self._wait_data(5.0)
            detach_dirs(writer)
            root.close()

    def _control_loop(self, ch: Channel, writer: TreeWriter) -> fr.Result:
        sink = _Sink(ch, self.spec.zero_copy, writer.flush)
        try:
            return ControlSession(self, ch, writer, sink).run()
        finally:
            sink.close()

    # -- data ---------------------------------------------------------------------------------------
    def _serve_data(self, ch: Channel, hello: Hello) -> None:
        with self._lock:
            if self.writer is None or self._error is not None:
                return
            self._data[ch] = False
        sink = _Sink(ch, self.spec.zero_copy, self.writer.flush)
        try:
            ch.send(fr.encode_accept([]))  # inside: a source already gone must still mark this one finished
            while True:
                kind, payload = ch.recv_frame(limit=256)
                if kind in FILE_FRAMES:
                    self.file_frame(ch, payload, kind, sink)
                elif kind is fr.T.DATA_DONE:
                    return
                elif kind is fr.T.ABORT:
                    raise TransferError(f"the source aborted: {fr.decode_text(payload)}")
                else:
                    raise ProtocolError(f"unexpected {kind.name} frame on a data connection")
        except BaseException as err:
            with self._lock:
                self._error = self._error or err
            with contextlib.suppress(OSError):
                ch.send(fr.encode_text(fr.T.ABORT, str(err)))
            if self._control is not None:
                shut(self._control.sock)  # wake the control thread: the attempt is lost
            if not isinstance(err, Exception):
                raise
        finally:
            sink.close()
            with self._data_cv:
                self._data[ch] = True
                self._data_cv.notify_all()

    def file_frame(self, ch: Channel, payload: bytes, kind: fr.T, sink: _Sink) -> None:
        assert self.writer is not None
        if kind is fr.T.DIGEST:
            self.writer.set_digest(*fr.decode_digest(payload))
            return
        head = fr.decode_file(payload)
        slot = self.writer.slot(head)
        if kind is fr.T.FILE_SKIP:
            self.writer.range_done(slot, head.length, ok=False)
            return
        if kind is fr.T.HOLE:  # nothing to write: the temp file reads zeros there and stays sparse
            self.writer.range_done(slot, head.length, ok=True, offset=head.offset)
            return
        if kind is fr.T.REUSE:
            try:
                self.writer.reuse(slot, head)
            except BaseException:
                self.writer.range_broken(slot)
                raise
            self.writer.range_done(slot, head.length, ok=True, offset=head.offset)
            return
        sink.written = 0
        try:
            if kind is fr.T.ZFILE:
                sink.write_packed(slot, head, self.spec.label)
            else:
                sink.write(slot, head)
            kind2, end = ch.recv_frame(limit=16)
            if kind2 is not fr.T.FILE_END or len(end) != 1 or end[0] not in _FILE_ENDS:
                raise ProtocolError(f"expected FILE_END after the file data, got {kind2.name}: "
                                    "the source sent more or fewer bytes than it announced")
        except BaseException:
            self.writer.range_broken(slot, head.offset, sink.written)
            raise
        self.writer.range_done(slot, head.length, ok=end[0] == fr.FileEnd.OK, offset=head.offset)

    def data_finished(self) -> None:
        """The source says it is done: every data connection must finish too, and none may have failed."""
        if not self._wait_data(DATA_WAIT):
            raise ProtocolError("the source finished while data connections were still open")
        self._raise_data_error()

    def _wait_data(self, timeout: float) -> bool:
        with self._data_cv:
            return self._data_cv.wait_for(lambda: all(self._data.values()), timeout)

    def _raise_data_error(self) -> None:
        with self._lock:
            err = self._error
        if err is not None:
            raise err

    def _abort_data(self) -> None:
        with self._lock:
            chans = list(self._data)
        for c in chans:
            shut(c.sock)

    def stats(self) -> TransferStats:
        assert self.writer is not None
        return replace(self.writer.stats(), transport=self.transport)

    def discard_partials(self) -> None:
        """The operator cancelled: what arrived is not kept for a resume."""
        if self.writer is not None:
            self.writer.keep_partials = False


class _Sink:
    """Moves one range of file bytes from a connection into a slot's temp file."""

    def __init__(self, ch: Channel, zero_copy: ZeroCopy, flush: JobFlush | None = None) -> None:
        self.ch = ch
        self.use_splice = zero_copy.splice and isinstance(ch.sock, socket.socket)  # never under TLS
        # ``job`` durability: start the writeback of each WRITEBACK_STEP written, and have the flush make
        # each FLUSH_STEP durable in the background, so a big file is mostly on disk when its last byte
        # arrives instead of all of it being written (and the device's cache drained) then.
        self.flush = flush
        self.writeback = flush is not None
        self._kick = 0
        self._flushed = 0
        self._pipe: tuple[int, int] | None = None
        self._buf: bytearray | None = None
        self._unpacker: Unpacker | None = None  # this connection's zstd context, made at its first ZFILE
        self.written = 0  # bytes of the current range already in the file (for resume bookkeeping)

    def write(self, slot: FileSlot, head: FileHead) -> None:
        fd, off, left = slot.fd, head.offset, head.length
        self._kick = self._flushed = off
        view = self.ch.buffered(left)  # bytes that came in with the frame header
        if view:
            if fd is not None:
                _pwrite_all(fd, view, off)
                self.written += len(view)
            off += len(view)
            left -= len(view)
        if not left:
            return
        if fd is None:
            self._discard(left)
        elif self.use_splice:
            self._splice(fd, off, left)
        else:
            self._recv(fd, off, left)

    def write_packed(self, slot: FileSlot, head: FileHead, label: str) -> None:
        """A ZFILE range: its ZDATA pieces, each bounded and checked before it is inflated (compress.py)."""
        if self._unpacker is None:
            self._unpacker = Unpacker()
        fd, off = slot.fd, head.offset
        self._kick = self._flushed = off
        for data in self._unpacker.pieces(self.ch, head.length, label):
            if fd is not None:
                _pwrite_all(fd, memoryview(data), off)
                self.written += len(data)
                if self.writeback and off + len(data) - self._kick >= WRITEBACK_STEP:
                    self._start_writeback(fd, off + len(data))
            off += len(data)

    def _recv(self, fd: int, off: int, left: int) -> None:
        if self._buf is None:
            self._buf = bytearray(_BUF)
        mv = memoryview(self._buf)
        sock = self.ch.sock
        while left:
            n = sock.recv_into(mv, min(left, _BUF))
            if n == 0:
                raise ProtocolError(f"truncated file data: {left} announced bytes never arrived")
            _pwrite_all(fd, mv[:n], off)
            self.written += n
            off += n
            left -= n
            self.ch.note_received(n)
            if self.writeback and off - self._kick >= WRITEBACK_STEP:
                self._start_writeback(fd, off)

    def _discard(self, left: int) -> None:
        if self._buf is None:
            self._buf = bytearray(_BUF)
        mv = memoryview(self._buf)
        while left:
            n = self.ch.sock.recv_into(mv, min(left, _BUF))
            if n == 0:
                raise ProtocolError("truncated file data")
            left -= n
            self.ch.note_received(n)

    def _splice(self, fd: int, off: int, left: int) -> None:
        if self._pipe is None:
            r, w = os.pipe2(os.O_CLOEXEC)
            with contextlib.suppress(OSError):
                fcntl.fcntl(w, _F_SETPIPE_SZ, _PIPE)
            self._pipe = (r, w)
        r, w = self._pipe
        sockfd = self.ch.sock.fileno()
        timeout = self.ch.sock.gettimeout()
        while left:
            try:
                n = os.splice(sockfd, w, min(left, _PIPE), flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
            except BlockingIOError:
                wait_ready(sockfd, select.POLLIN, timeout, "no file data came")
                continue
            if n == 0:
                raise ProtocolError(f"truncated file data: {left} announced bytes never arrived")
            self.ch.note_received(n)
            left -= n
            while n:
                try:
                    m = os.splice(r, fd, n, offset_dst=off, flags=os.SPLICE_F_MOVE)
                    self.written += m
                except OSError as err:
                    if err.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                        raise
                    # This filesystem can't take splice writes: copy what is in the pipe, then stop
                    # splicing on this connection.
                    self._pipe_to_file(r, fd, off, n)
                    self.written += n
                    off += n
                    self.use_splice = False
                    if left:
                        self._recv(fd, off, left)
                    return
                off += m
                n -= m
            if self.writeback and off - self._kick >= WRITEBACK_STEP:
                self._start_writeback(fd, off)

    def _start_writeback(self, fd: int, end: int) -> None:
        start_writeback(fd, self._kick, end - self._kick)
        self._kick = end
        if self.flush is not None and end - self._flushed >= FLUSH_STEP:
            self.flush.flush_early(fd)
            self._flushed = end

    def _pipe_to_file(self, r: int, fd: int, off: int, n: int) -> None:
        while n:
            data = os.read(r, n)
            _pwrite_all(fd, memoryview(data), off)
            off += len(data)
            n -= len(data)

    def close(self) -> None:
        if self._pipe is not None:
            for p in self._pipe:
                os.close(p)
            self._pipe = None


def _pwrite_all(fd: int, data: memoryview, off: int) -> None:
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], off + done)

