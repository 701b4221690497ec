"""TLS 1.3 for the data plane (``--encrypt``), with the agent's cluster certificate, mutual both ways.

The receiver's data port takes plaintext and TLS on the same port: a TLS ClientHello starts with byte 0x16, a
zcrepl HELLO frame with 1, so one peek decides. Both ends verify the other against the cluster CA
(CERT_REQUIRED, minimum TLS 1.3) and against the revocation list, and check the agent name in the peer's
certificate: the sender insists on the destination agent the controller named, the receiver hands the name to
the ticket check (``peer.Binding``).

``TlsStream`` wraps an ``ssl.SSLSocket`` in non-blocking mode behind one lock. OpenSSL forbids using one SSL
object from two threads at once, and the sender's control connection is read by one thread while another
writes the manifest; with blocking calls a reader waiting for data would hold the object for as long as the
peer is silent. Here every SSL call is short and made under the lock, and the waiting (poll) happens outside it.

Sending file bytes: with kTLS (Python 3.12+ sets ``OP_ENABLE_KTLS``; the kernel needs the ``tls`` module and
OpenSSL its ktls build) ``SSLSocket.sendfile`` lets the kernel encrypt straight from the page cache where the
running Python exposes ``uses_ktls_for_send``; otherwise file ranges are read into a reused buffer and written
through OpenSSL. Receiving is always ``recv_into`` + ``pwrite``: splice cannot read decrypted bytes.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator

from cryptography import x509

from zcrepl.agent.transfer.peer import KTLS, TLS
from zcrepl.core import pki
from zcrepl.core.errors import ProtocolError
from zcrepl.core.trust import Material, Trust

TLS_RECORD_TYPE_HANDSHAKE = 0x16  # first byte of a TLS ClientHello
OP_ENABLE_KTLS: int = getattr(ssl, "OP_ENABLE_KTLS", 0)  # Python 3.12+


class TlsUnavailable(ProtocolError):
    """This agent has no certificate (started with --insecure), so it cannot take part in encrypted transfers."""

    retryable = False


class TlsContexts:
    """The agent's server and client contexts, rebuilt when its ``Trust`` reloads new files."""

    def __init__(self, trust: Trust) -> None:
        self.trust = trust
        self._lock = threading.Lock()
        self._generation = -1
        self._server: ssl.SSLContext | None = None
        self._client: ssl.SSLContext | None = None

    def _current(self) -> tuple[ssl.SSLContext, ssl.SSLContext]:
        self.trust.refresh()
        with self._lock:
            if self._generation != self.trust.generation or self._server is None or self._client is None:
                m = self.trust.material
                self._server, self._client = context(m, server=True), context(m, server=False)
                self._generation = self.trust.generation
            return self._server, self._client

    def server(self) -> ssl.SSLContext:
        return self._current()[0]

    def client(self) -> ssl.SSLContext:
        return self._current()[1]

    def peer_name(self, stream: TlsStream) -> str:
        """The agent name in the peer's certificate; ProtocolError for anything but a live agent certificate."""
        der = stream.sock.getpeercert(binary_form=True)
        ident = pki.identity_of(x509.load_der_x509_certificate(der)) if der else None
        if ident is None or ident.kind != "agent":
            raise ProtocolError(f"the peer's certificate is {ident or 'not a zcrepl identity'}, not an agent's")
        if self.trust.revoked(ident.serial):
            raise ProtocolError(f"the certificate of agent {ident.name} is revoked")
        return ident.name


def context(m: Material, *, server: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = not server  # the receiver must prove the agent role name, like the agents' gRPC port
    ctx.load_verify_locations(cadata=m.ca_pem.decode("ascii"))
    with _memfile(m.cert_pem) as cert, _memfile(m.key_pem) as key:
        ctx.load_cert_chain(cert, key)
    ctx.options |= OP_ENABLE_KTLS
    if server:
        ctx.num_tickets = 0  # no resumption: a session ticket would only be one more post-handshake message
    return ctx


@contextlib.contextmanager
def _memfile(data: bytes) -> Iterator[str]:
    """A path to ``data`` that exists only in memory: ssl loads certificates and keys from paths, and the
    material in memory is the checked set (the files on disk may be mid-rewrite)."""
    fd = os.memfd_create("zc-pem", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def starts_tls(sock: socket.socket) -> bool:
    """Whether the client opened with a TLS ClientHello (peeked: nothing is consumed). EOF reads as no."""
    first = sock.recv(1, socket.MSG_PEEK)
    return bool(first) and first[0] == TLS_RECORD_TYPE_HANDSHAKE


def accept(ctxs: TlsContexts, sock: socket.socket, deadline: float) -> tuple[TlsStream, str]:
    """The server side of the handshake, finished by ``deadline`` (monotonic); (stream, peer agent name)."""
    ssock = ctxs.server().wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    stream = TlsStream(ssock)
    try:
        stream.handshake(deadline)
        return stream, ctxs.peer_name(stream)
    except BaseException:
        stream.close()
        raise


def connect(ctxs: TlsContexts, sock: socket.socket, expect: str, deadline: float) -> TlsStream:
    """The client side: the receiver must hold the certificate of agent ``expect``."""
    ssock = ctxs.client().wrap_socket(sock, server_hostname=pki.AGENT_DNS, do_handshake_on_connect=False)
    stream = TlsStream(ssock)
    try:
        stream.handshake(deadline)
        name = ctxs.peer_name(stream)
        if name != expect:
            raise ProtocolError(f"the data port answered with the certificate of agent {name}, not {expect}; "
                                f"check the address {expect} advertises")
        return stream
    except BaseException:
        stream.close()
        raise


def ktls_send(ssock: ssl.SSLSocket) -> bool:
    """True when the kernel encrypts what this socket sends and Python can hand it file pages (SSL_sendfile)."""
    obj = getattr(ssock, "_sslobj", None)
    probe = getattr(obj, "uses_ktls_for_send", None)
    try:
        return bool(probe()) if probe is not None else False
    except (ssl.SSLError, ValueError):
        return False


class TlsStream:
    """A socket-like TLS connection safe for one reader and one writer thread at once (see module doc).

    Offers what ``channel.Channel`` and the senders use: ``sendall``, ``recv_into``, ``settimeout``,
    ``gettimeout``, ``fileno``, ``shutdown``, ``close``.
    """

    def __init__(self, ssock: ssl.SSLSocket) -> None:
        self.sock = ssock
        self._lock = threading.Lock()
        self._timeout: float | None = ssock.gettimeout()
        ssock.setblocking(False)
        self.ktls = False

    @property
    def transport(self) -> str:
        return KTLS if self.ktls else TLS

    def handshake(self, deadline: float) -> None:
        while True:
            try:
                with self._lock:
                    self.sock.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._wait(select.POLLIN, deadline - time.monotonic(), "the TLS handshake did not finish")
            except ssl.SSLWantWriteError:
                self._wait(select.POLLOUT, deadline - time.monotonic(), "the TLS handshake did not finish")
        self.ktls = ktls_send(self.sock)

    def fileno(self) -> int:
        return self.sock.fileno()

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout

    def gettimeout(self) -> float | None:
        return self._timeout

    def sendall(self, data: bytes | bytearray | memoryview, flags: int = 0) -> None:
        """Everything or an OSError; ``flags`` (MSG_MORE) have no meaning under TLS and are ignored."""
        view = memoryview(data).cast("B")
        while view:
            try:
                with self._lock:
                    n = self.sock.send(view)
            except ssl.SSLWantWriteError:
                self._wait(select.POLLOUT, self._timeout, "the peer accepted no data")
                continue
            except ssl.SSLWantReadError:
                self._wait(select.POLLIN, self._timeout, "the peer sent nothing the TLS layer needed")
                continue
            view = view[n:]

    def recv_into(self, buffer: bytearray | memoryview, nbytes: int = 0) -> int:
        """Like ``socket.recv_into``: at least one byte, or 0 at the end of the stream."""
        view = memoryview(buffer).cast("B")
        want = nbytes or len(view)
        got = 0
        while got < want:
            try:
                with self._lock:
                    n = self.sock.recv_into(view[got:want])
            except ssl.SSLWantReadError:
                if got:
                    return got  # what is decrypted so far; don't wait for more than the caller needs now
                self._wait(select.POLLIN, self._timeout, "no data came")
                continue
            except ssl.SSLWantWriteError:
                self._wait(select.POLLOUT, self._timeout, "the peer accepted no data")
                continue
            if n == 0:
                return got
            got += n
        return got

    def sendfile(self, fd: int, offset: int, count: int) -> int:
        """kTLS only: the kernel encrypts ``count`` bytes of ``fd`` from the page cache; returns bytes sent."""
        with self._lock, open(fd, "rb", buffering=0, closefd=False) as f:
            self.sock.settimeout(self._timeout)
            try:
                return self.sock.sendfile(f, offset, count)
            finally:
                self.sock.setblocking(False)

    def shutdown(self, how: int) -> None:
        # The plain socket's shutdown: SSLSocket.shutdown first drops its SSL object, after which a write
        # racing with it on another thread would go out unencrypted.
        socket.socket.shutdown(self.sock, how)

    def close(self) -> None:
        self.sock.close()

    def _wait(self, events: int, timeout: float | None, what: str) -> None:
        if timeout is not None and timeout <= 0:
            raise TimeoutError(f"{what} in time")
        poller = select.poll()
        poller.register(self.sock.fileno(), events)
        if not poller.poll(None if timeout is None else timeout * 1000):
            raise TimeoutError(f"{what} for {timeout:.0f}s")
