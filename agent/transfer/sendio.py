"""Sending primitives: the job spec, the bandwidth cap, sendfile with its slow paths, and connecting
(over TLS when the order says encrypt: see ``tls.py``)."""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from zcrepl.agent.transfer import frame as fr
from zcrepl.agent.transfer import tls
from zcrepl.agent.transfer.cancel import Cancel
from zcrepl.agent.transfer.channel import ZERO_COPY, Channel, Stream, ZeroCopy, wait_ready
from zcrepl.agent.transfer.frame import Hello
from zcrepl.core.config import AgentConfig
from zcrepl.core.errors import ProtocolError, Unavailable
from zcrepl.core.settings import default_of
from zcrepl.core.types import JobOptions, TransferStats


class Refused(ProtocolError):
    """The receiver answered HELLO with REFUSE: nothing of the attempt was applied."""


CHUNK = 8 << 20


@dataclass
class SendSpec:
    job_id: int
    attempt: int
    ticket: bytes
    address: tuple[str, int]
    options: JobOptions
    cancel: Cancel
    on_progress: Callable[[TransferStats], None]
    connect_timeout: float = 10.0
    io_timeout: float = default_of(AgentConfig, "io_timeout")  # the daemon passes its config's
    progress_interval: float = 0.5
    encrypt: bool = False  # TLS 1.3 on every connection; the receiver must be agent ``dest``
    dest: str = ""  # the destination agent the controller named (checked in its certificate)
    contexts: tls.TlsContexts | None = None  # this agent's TLS material; None when it runs --insecure
    zero_copy: ZeroCopy = ZERO_COPY
    # How a connection is opened: None is TCP to ``address``; protocol tests pass one that returns a
    # socketpair end whose other end a ReceiveSession (or a hostile peer) serves in-process.
    dial: Callable[[SendSpec], socket.socket] | None = None


class Pacer:
    """Job-wide bandwidth cap shared by all data connections: the average rate never exceeds ``rate``.

    The job's own bwlimit is a ceiling; the controller's load policy may lower the cap or pause the
    transfer at run time (``set``). A pause holds senders between chunks; every ``KEEPALIVE`` seconds one
    small chunk still goes out, so the receiver's idle timeout never fires and no progress is lost.
    """

    KEEPALIVE = 20.0
    PAUSED_CHUNK = 64 << 10

    def __init__(self, rate: int, cancel: threading.Event) -> None:  # the sender calls wake() when it is set
        self.ceiling = rate
        self.rate = rate
        self.paused = False
        self.cancel = cancel
        self.start = time.monotonic()
        self.sent = 0
        self._lock = threading.Lock()
        self._changed = threading.Event()

    def set(self, rate: int, paused: bool) -> None:
        """A new cap (0 = the ceiling) and pause state; the new rate counts from now."""
        with self._lock:
            self.rate = min(rate, self.ceiling) if rate and self.ceiling else (rate or self.ceiling)
            self.paused = paused
            self.start, self.sent = time.monotonic(), 0
        self._changed.set()

    def wake(self) -> None:
        """Cut a pacing wait or a pause short (a cancel or a failure: the caller checks which)."""
        self._changed.set()

    @property
    def chunk(self) -> int:
        if self.paused:
            return self.PAUSED_CHUNK
        return CHUNK if not self.rate else max(64 << 10, min(CHUNK, self.rate // 8))

    def account(self, n: int) -> None:
        if self.paused:
            self._hold()
            return
        if not self.rate:
            return
        with self._lock:
            self.sent += n
            ahead = self.sent / self.rate - (time.monotonic() - self.start)
        if ahead > 0:
            self._changed.clear()
            # Wake early on cancel or on a new setting (a resume must not wait out an old sleep).
            deadline = time.monotonic() + ahead
            while not self.cancel.is_set() and not self._changed.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)

    def _hold(self) -> None:
        deadline = time.monotonic() + self.KEEPALIVE
        while self.paused and not self.cancel.is_set() and (left := deadline - time.monotonic()) > 0:
            self._changed.clear()
            if self.paused and not self.cancel.is_set():  # not set between the loop's check and the clear
                self._changed.wait(left)


def sendfile_range(sock: socket.socket, fd: int, offset: int, count: int, timeout: float | None) -> int:
    """Send ``count`` bytes of ``fd`` from ``offset``; returns fewer only when the file ended early."""
    sockfd = sock.fileno()
    sent = 0
    while sent < count:
        try:
            n = os.sendfile(sockfd, fd, offset + sent, count - sent)
        except BlockingIOError:
            wait_ready(sockfd, select.POLLOUT, timeout, "the peer accepted no data")
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


def tls_send_range(stream: tls.TlsStream, fd: int, offset: int, count: int, buf: bytearray, prefix: bytes) -> int:
    """The TLS path: pread into a reused buffer behind ``prefix`` (the frame header, so header and bytes
    share TLS records) and write it through OpenSSL. ``prefix`` always goes out; returns file bytes sent."""
    mv = memoryview(buf)
    sent = 0
    head = len(prefix)
    if head > len(buf) // 2:  # a long run of REUSE frames: on its own
        stream.sendall(prefix)
        head = 0
    mv[:head] = prefix[:head]
    while sent < count or head:
        n = os.preadv(fd, [mv[head : head + min(len(buf) - head, count - sent)]], offset + sent) if sent < count else 0
        if head + n:
            stream.sendall(mv[: head + n])
        head = 0
        if n == 0:
            break
        sent += n
    return sent


def dial_tcp(spec: SendSpec) -> socket.socket:
    try:
        sock = socket.create_connection(spec.address, timeout=spec.connect_timeout)
    except OSError as err:
        raise Unavailable(
            f"cannot connect to the destination data port {spec.address[0]}:{spec.address[1]}: "
            f"{err.strerror or err}; check that the destination agent is running and reachable"
        ) from err
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    except OSError:
        sock.close()
        raise
    return sock


def connect(spec: SendSpec, hello: Hello) -> tuple[Stream, Channel, bytes]:
    """Open (TLS first when ``spec.encrypt``), authenticate, return (stream, channel, ACCEPT payload)."""
    if spec.encrypt and spec.contexts is None:
        raise tls.TlsUnavailable("this agent has no TLS certificate (it runs --insecure), so it cannot send an "
                                 "encrypted transfer; give it one (--join TOKEN or --ca/--cert/--key) or submit "
                                 "the job without --encrypt")
    sock = spec.dial(spec) if spec.dial is not None else dial_tcp(spec)
    stream: Stream = sock
    try:
        sock.settimeout(spec.io_timeout)
        if spec.encrypt:
            assert spec.contexts is not None
            stream = tls.connect(spec.contexts, sock, spec.dest, time.monotonic() + spec.connect_timeout)
            stream.settimeout(spec.io_timeout)
        ch = Channel(stream, bufsize=64 << 10)
        ch.send(fr.encode_hello(hello))
        kind, payload = ch.recv_frame(limit=4096)
        if kind is fr.T.REFUSE:
            raise Refused(f"the destination refused the connection: {fr.decode_text(payload)}")
        if kind is not fr.T.ACCEPT:
            raise ProtocolError(f"expected ACCEPT, got {kind.name}")
        return stream, ch, payload
    except BaseException:
        stream.close()
        sock.close()  # a no-op once TLS took the descriptor over
        raise
