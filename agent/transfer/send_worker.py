"""One data connection of a sender and the thread that feeds it work items: plain ranges, delta or
resume answers (REUSE what the receiver has, send the rest), and sparse files (data segments only).

On a TLS connection a file's FILE header waits in ``prefix`` and leaves with its first bytes (MSG_MORE means
nothing to OpenSSL); the bytes go by kTLS sendfile when the kernel encrypts, else by pread + SSL writes."""

from __future__ import annotations

import errno
import logging
import os
import queue
import socket
import threading
from enum import Enum
from typing import TYPE_CHECKING, NamedTuple

from zcrepl.agent import priority
from zcrepl.agent.transfer import delta
from zcrepl.agent.transfer import frame as fr
from zcrepl.agent.transfer.channel import Channel, Stream
from zcrepl.agent.transfer.compress import Packer
from zcrepl.agent.transfer.frame import Entry
from zcrepl.agent.transfer.partial import intervals_digest, merge
from zcrepl.agent.transfer.sendio import readsend_range, sendfile_range, tls_send_range
from zcrepl.agent.transfer.sourcefile import SourceFiles, as_scanned, data_segments
from zcrepl.agent.transfer.tls import TlsStream
from zcrepl.core.errors import UnsafePath
from zcrepl.core.logs import carry, kv
from zcrepl.core.types import Compress

if TYPE_CHECKING:
    from zcrepl.agent.transfer.send import Sender

log = logging.getLogger(__name__)

class Work(Enum):
    RANGE = "range"  # bytes [offset, offset + length) of the file, sent as they are
    BASIS = "basis"  # answer the receiver's NEED_BASIS: REUSE what it has, send the rest
    SPARSE = "sparse"  # the whole file, data segments only


class WorkItem(NamedTuple):
    """One job for a data connection: which file, and what to send of it (a tuple: one is made per file)."""

    kind: Work
    file: int  # its index in the manifest
    offset: int = 0
    length: int = 0


END: list[WorkItem] | None = None  # no more work: the worker sends DATA_DONE and exits

SMALL = 64 << 10  # a whole file up to this size is read into the output buffer, not sent with sendfile
FLUSH = 256 << 10  # the output buffer goes out once it holds this much (or the worker runs out of work)


class DataWorker:
    """One data connection and the thread that feeds it.

    Frames and small files' bytes collect in ``out`` and leave in one send per ``FLUSH`` bytes: at 4 KiB a
    file, a header send, a sendfile and a trailer per file cost more than reading the file ever does. ``out``
    goes out before any other write to the connection and whenever the work queue is empty, so nothing the
    receiver waits for stays behind while this thread waits.
    """

    def __init__(self, sender: Sender, sock: Stream, ch: Channel, n: int) -> None:
        self.sender = sender
        self.sock = sock
        self.tls = sock if isinstance(sock, TlsStream) else None
        self.prefix = b""  # TLS only: the FILE header that goes out with the range's first bytes
        self.ch = ch
        self.files_done = self.bytes_done = 0
        self.out = bytearray()  # frames (and small files) not sent yet
        self.use_sendfile = sender.spec.zero_copy.sendfile and (self.tls is None or self.tls.ktls)
        self.buf: bytearray | None = None
        o = sender.spec.options
        self.packer = Packer(o.compress_level) if o.compress is Compress.ON else None  # per connection
        self.sources = SourceFiles(sender.root)
        self.work: queue.Queue[list[WorkItem] | None] = queue.Queue()  # items of one NEED frame per put
        self.thread = threading.Thread(target=carry(self.run), name=f"zc-send-data-{n}", daemon=True)
        self.finished = threading.Event()

    def run(self) -> None:
        priority.apply_to_this_thread()
        s = self.sender
        try:
            while True:
                try:
                    items = self.work.get_nowait()
                except queue.Empty:
                    self.sources.release()
                    self.flush()
                    items = self.work.get()
                if items is None:
                    break
                for item in items:
                    s.check_cancel()
                    if item.kind is Work.RANGE and item.length <= SMALL and item.offset == 0:
                        self.send_small(item.file)
                    else:
                        self.flush()
                        if item.kind is Work.BASIS:
                            self.send_basis(item.file)
                        elif item.kind is Work.SPARSE:
                            self.send_sparse(item.file)
                        else:
                            self.send_range(item.file, item.offset, item.length)
                    s.item_done(item.file)
                    s.progress()
            self.out += fr.frame(fr.T.DATA_DONE)
            self.flush()
        except BaseException as err:
            s.record_failure(err)
        finally:
            self.sources.release()
            self.finished.set()
            s.worker_finished()

    def flush(self) -> None:
        if self.out:
            n = len(self.out)
            self.ch.send(self.out)
            self.out.clear()
            self.sender.pacer.account(n)

    def send_small(self, index: int) -> None:
        """A whole small file into ``out``: FILE (ZFILE) header, its bytes (read, checked against the scan before
        and after; compressed), FILE_END."""
        s = self.sender
        e = s.files[index]
        opened = self.open_source(index, 0, e.size, e)
        if opened is None:
            return
        fd, st = opened
        try:
            data = os.pread(fd, e.size, 0)
            ok = len(data) == e.size and as_scanned(os.fstat(fd), e)
        finally:
            os.close(fd)
        self.bytes_done += len(data)
        if len(data) < e.size:  # shrank while we read it: pad to the announced length, then void it
            data += bytes(e.size - len(data))
        out = self.out
        if self.packer is None:
            out += fr.file_head(fr.T.FILE, index, 0, e.size, e.size, e.mtime_ns, st.st_mode & 0o7777)
            out += data
        else:  # one ZDATA piece (SMALL <= compress.PIECE)
            out += fr.file_head(fr.T.ZFILE, index, 0, e.size, e.size, e.mtime_ns, st.st_mode & 0o7777)
            if data:
                out += self.packer.pack(data)
        if ok:
            out += fr.FILE_END_OK
            self.files_done += 1
        else:
            out += fr.FILE_END_CHANGED
            s.source_changed(index, e.path)
        if len(out) >= FLUSH:
            self.flush()

    def send_range(self, index: int, offset: int, length: int) -> None:
        s = self.sender
        e = s.files[index]
        opened = self.open_source(index, offset, length, e)
        if opened is None:
            return
        fd, st = opened
        try:
            if self.send_piece(fd, st, index, offset, length, e) and s.range_finished(index):
                self.files_done += 1
        finally:
            os.close(fd)

    def open_source(self, index: int, offset: int, length: int, e: Entry) -> tuple[int, os.stat_result] | None:
        """The source file as scanned and its fstat, or None after telling the receiver it changed or vanished."""
        s = self.sender
        try:
            fd, st = self.sources.open(e.path)
        except (OSError, UnsafePath) as err:
            s.source_trouble(index, e.path, err)
            self.skip(index, offset, length, e)
            return None
        if not as_scanned(st, e):
            os.close(fd)
            s.source_changed(index, e.path)
            self.skip(index, offset, length, e)  # changed since the scan: the receiver drops it
            return None
        return fd, st

    def send_piece(self, fd: int, st: os.stat_result, index: int, offset: int, length: int, e: Entry) -> bool:
        """FILE header, the bytes by sendfile, FILE_END; False when the source changed meanwhile."""
        s = self.sender
        self.out += fr.file_head(fr.T.FILE if self.packer is None else fr.T.ZFILE, index, offset, length, e.size,
                                 e.mtime_ns, st.st_mode & 0o7777)
        if self.packer is not None:
            self.flush()
            sent = self.send_packed(fd, offset, length)  # pads a shrunk file itself
        else:
            sent = self.send_plain(fd, offset, length)
        ok = sent == length
        after = os.fstat(fd)
        ok = ok and as_scanned(after, e)
        self.out += fr.FILE_END_OK if ok else fr.FILE_END_CHANGED
        if not ok:
            s.source_changed(index, e.path)
        return ok

    def send_plain(self, fd: int, offset: int, length: int) -> int:
        """``out`` (ending with the header) and the range's bytes as they are (sendfile when it can)."""
        if self.tls is None:
            self.ch.sock.sendall(self.out, socket.MSG_MORE)
        else:
            self.prefix = bytes(self.out)
        self.ch.sent += len(self.out)
        self.out.clear()
        sent = self.send_bytes(fd, offset, length)
        if self.prefix:  # an empty range: the header still goes
            self.ch.send(self.prefix)
            self.prefix = b""
        if sent != length:  # shrank while we read it: pad to the announced length, then void it
            self.pad(length - sent)
        return sent

    def send_basis(self, index: int) -> None:
        """Answer a NEED_BASIS: hash, then REUSE what the receiver already has and send only the rest."""
        s = self.sender
        e, b = s.files[index], s.bases[index]
        opened = self.open_source(index, 0, e.size, e)
        if opened is None:
            return
        fd, st = opened
        try:
            if self.buf is None:
                self.buf = bytearray(1 << 20)
            if b.kind == fr.BasisKind.DELTA:
                mine, whole = delta.hash_blocks(fd, e.size, b.block, self.buf)
                hint = s.hinted.get(index)
                if hint is not None:  # we hashed while the receiver did; now take its hashes
                    hint[1].wait()  # set by the reader when they arrive, or by a cancel or failure
                    s.check_cancel()
                    b = s.bases[index]
                    if b.block != hint[0]:
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
            if not whole:  # it shrank while hashed
                s.source_changed(index, e.path)
                self.skip(index, 0, e.size, e)
                return
            self.out += fr.encode_digest(index, whole)
            self.flush()
            ok = True
            for off, length, reuse in pieces:
                if reuse:
                    self.out += fr.file_head(fr.T.REUSE, index, off, length, e.size, e.mtime_ns,
                                             st.st_mode & 0o7777)
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
        opened = self.open_source(index, 0, e.size, e)
        if opened is None:
            return
        fd, st = opened
        try:
            ok, off = True, 0
            for data, length in data_segments(fd, e.size):
                if data > off:
                    self.hole(index, off, data - off, e, st)
                ok = self.send_piece(fd, st, index, data, length, e) and ok
                off = data + length
                s.check_cancel()
            if off < e.size:
                self.hole(index, off, e.size - off, e, st)
            if ok:
                self.files_done += 1
        finally:
            os.close(fd)

    def hole(self, index: int, offset: int, length: int, e: Entry, st: os.stat_result) -> None:
        self.out += fr.file_head(fr.T.HOLE, index, offset, length, e.size, e.mtime_ns, st.st_mode & 0o7777)

    def skip(self, index: int, offset: int, length: int, e: Entry) -> None:
        self.out += fr.file_head(fr.T.FILE_SKIP, index, offset, length, e.size, e.mtime_ns, e.mode)

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

    def send_packed(self, fd: int, offset: int, length: int) -> int:
        """The range as zstd pieces (compress.py); the cap counts wire bytes, progress counts file bytes."""
        assert self.packer is not None
        s = self.sender
        done = 0
        for n, wire in self.packer.frames(fd, offset, length, s.pacer.chunk):
            s.check_cancel()
            self.ch.send(wire)
            self.bytes_done += n
            done += n
            s.pacer.account(len(wire))
            s.progress()
        return done

    def send_chunk(self, fd: int, off: int, count: int, first: bool) -> int:
        if self.tls is not None:
            return self.send_tls(fd, off, count, first)
        assert isinstance(self.sock, socket.socket)
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

    def send_tls(self, fd: int, off: int, count: int, first: bool) -> int:
        assert self.tls is not None
        if self.use_sendfile:  # kTLS: the kernel encrypts the page cache's bytes
            if self.prefix:
                self.tls.sendall(self.prefix)
                self.prefix = b""
            try:
                return self.tls.sendfile(fd, off, count)
            except OSError as err:
                if not first or err.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                log.info("kTLS sendfile unavailable, using SSL writes", extra=kv(error=err.strerror))
                self.use_sendfile = False
        if self.buf is None:
            self.buf = bytearray(1 << 20)
        prefix, self.prefix = self.prefix, b""
        return tls_send_range(self.tls, fd, off, count, self.buf, prefix)

    def pad(self, n: int) -> None:
        zero = bytes(min(n, 1 << 20))
        while n > 0:
            k = min(n, len(zero))
            self.ch.send(zero[:k])
            n -= k
