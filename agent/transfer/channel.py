"""Socket I/O of the data plane: frames over one connection (``Channel``), buffered both ways and counted.

The wire format itself (frame types, encoders and decoders) is in frame.py; this module only moves bytes.
"""

from __future__ import annotations

import contextlib
import select
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from zcrepl.agent.transfer.frame import HEAD, MAX_FRAME, T
from zcrepl.core.errors import ProtocolError

if TYPE_CHECKING:
    from zcrepl.agent.transfer.peer import Peer


@dataclass(frozen=True)
class ZeroCopy:
    """Which kernel paths move file bytes. Turning one off takes the path a kernel, filesystem or transport
    without it takes anyway: tests pass these to exercise every fallback on any machine."""

    sendfile: bool = True  # sender: os.sendfile (kTLS sendfile when the kernel encrypts); off: pread + send
    splice: bool = True  # receiver: socket -> pipe -> file (never under TLS); off: recv_into + pwrite


ZERO_COPY = ZeroCopy()


def shut(sock: Stream | socket.socket) -> None:
    """Shut both directions: a thread blocked in recv, send, sendfile or splice on it wakes up with EOF or an
    error (close alone would not wake it), and the peer sees the end. Already gone is fine."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def wait_ready(sockfd: int, events: int, timeout: float | None, what: str) -> None:
    """Block until a non-blocking socket is ready for ``events`` (after EAGAIN from sendfile or splice,
    which bypass the socket object's own timeout handling); TimeoutError names ``what`` waited for."""
    poller = select.poll()
    poller.register(sockfd, events)
    if not poller.poll(None if timeout is None else timeout * 1000):
        raise TimeoutError(f"{what} for {timeout:.0f}s")


class Stream(Protocol):
    """What a Channel reads and writes: a plain socket, or ``tls.TlsStream`` on an encrypted connection."""

    def sendall(self, data: bytes | bytearray | memoryview, flags: int = 0, /) -> None: ...
    def recv_into(self, buffer: bytearray | memoryview, nbytes: int = 0, /) -> int: ...
    def fileno(self) -> int: ...
    def settimeout(self, timeout: float | None, /) -> None: ...
    def gettimeout(self) -> float | None: ...
    def shutdown(self, how: int, /) -> None: ...
    def close(self) -> None: ...


class Channel:
    """Blocking frame I/O over one socket, counting bytes both ways.

    Reads are buffered: one ``recv_into`` may pull several small frames and file bodies at once, which
    is what makes thousands of small files per second possible. File bodies larger than what is
    buffered are read straight from the socket by the caller (``take_buffered`` first).
    """

    def __init__(self, sock: Stream, bufsize: int = 256 << 10) -> None:
        self.sock = sock
        self.peer: Peer | None = None  # set by the data server: who connected, how (see transfer/peer.py)
        self.sent = 0
        self.received = 0
        self._buf = bytearray(bufsize)
        self._mv = memoryview(self._buf)
        self._start = 0
        self._end = 0

    def send(self, data: bytes | bytearray | memoryview) -> None:
        self.sock.sendall(data)
        self.sent += len(data)

    def _fill(self, need: int) -> None:
        """Make at least ``need`` (<= buffer size) bytes available in the buffer."""
        if self._end - self._start >= need:
            return
        if self._start:
            n = self._end - self._start
            self._buf[:n] = self._mv[self._start : self._end]
            self._start, self._end = 0, n
        while self._end < need:
            k = self.sock.recv_into(self._mv[self._end :])
            if k == 0:
                raise ProtocolError(f"connection closed by the peer after {self._end} of {need} bytes of a frame")
            self._end += k
            self.received += k

    def recv_frame(self, limit: int = MAX_FRAME) -> tuple[T, bytes]:
        """Next frame; EOF at a frame boundary raises ProtocolError too (callers expect a reply)."""
        self._fill(HEAD.size)
        kind, length = HEAD.unpack_from(self._mv, self._start)
        try:
            t = T(kind)
        except ValueError as err:
            raise ProtocolError(f"unknown frame type {kind}") from err
        if length > limit:
            raise ProtocolError(f"{t.name} frame of {length} bytes exceeds the limit of {limit}")
        self._start += HEAD.size
        if length <= len(self._buf):
            self._fill(length)
            payload = bytes(self._mv[self._start : self._start + length])
            self._start += length
            return t, payload
        out = bytearray(length)
        got = self.take_buffered(memoryview(out))
        while got < length:
            k = self.sock.recv_into(memoryview(out)[got:])
            if k == 0:
                raise ProtocolError(f"connection closed by the peer inside a {t.name} frame")
            got += k
            self.received += k
        return t, bytes(out)

    def take_buffered(self, dest: memoryview) -> int:
        """Move already-received bytes (at most ``len(dest)``) into ``dest``; returns how many."""
        n = min(len(dest), self._end - self._start)
        if n:
            dest[:n] = self._mv[self._start : self._start + n]
            self._start += n
        return n

    def buffered(self, limit: int) -> memoryview:
        """Up to ``limit`` already-received bytes, consumed; the view is valid until the next read."""
        n = min(limit, self._end - self._start)
        view = self._mv[self._start : self._start + n]
        self._start += n
        return view

    def note_received(self, n: int) -> None:
        self.received += n
