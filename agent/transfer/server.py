"""The data port: accepts connections, authenticates them with single-use tickets, runs receivers.

A connection must present a ticket the controller minted for a job this agent was told to receive,
within ``handshake_timeout`` of its accept (a deadline for the whole handshake, not per read); anything else
is refused and closed. Until then it counts against a small budget of its own (``admission``), never
against the places authenticated transfers use. Tickets are looked up by their
SHA-256, so the lookup itself leaks nothing about valid tickets, and are removed on first use (a
watch rule's ticket stays until it expires, the rule stops or moves to a new epoch).

Each ticket is bound to its peer (``peer.Binding``): the source agent the controller named, the addresses
it may connect from, and whether the connection must be encrypted. A connection that fails the binding is
refused without consuming the ticket. A connection that opens with a TLS ClientHello is served over TLS
(``tls.py``), the TLS handshake inside the same deadline, and its peer certificate names the agent checked
against the binding.
"""

from __future__ import annotations

import hashlib
import logging
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from zcrepl.agent import priority
from zcrepl.agent.transfer import frame as fr
from zcrepl.agent.transfer import tls
from zcrepl.agent.transfer.admission import Admission, Waiting
from zcrepl.agent.transfer.channel import Channel, Stream, shut
from zcrepl.agent.transfer.frame import Hello
from zcrepl.agent.transfer.peer import Binding, Peer, normalise
from zcrepl.core.config import AgentConfig
from zcrepl.core.errors import ProtocolError
from zcrepl.core.logs import attempt_fields, kv, log_context

log = logging.getLogger(__name__)


@dataclass
class Grant:
    """What a valid ticket unlocks: one connection of one attempt of one job, in one role."""

    job_id: int
    attempt: int
    expires_at: float  # time.monotonic()
    # Runs on the authenticated connection (it sends ACCEPT itself); owns error reporting.
    serve: Callable[[Channel, Hello], object]
    on_expired: Callable[[], None] = lambda: None
    role: fr.ConnRole = fr.ConnRole.CONTROL
    # A watch rule's ticket: used by every session of that rule until it expires or is revoked.
    reusable: bool = False
    bind: Binding = field(default_factory=Binding)  # the peer it is for; checked before the ticket is used up


class Refused(ProtocolError):
    """A valid ticket from the wrong peer (address, certificate or encryption); the ticket stays valid."""


class TicketBook:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._grants: dict[bytes, Grant] = {}
        self._clock = clock

    @staticmethod
    def _key(ticket: bytes) -> bytes:
        return hashlib.sha256(ticket).digest()

    def register(self, ticket: bytes, grant: Grant) -> None:
        if len(ticket) != fr.TICKET_LEN:
            raise ValueError(f"tickets are {fr.TICKET_LEN} bytes")
        with self._lock:
            self._grants[self._key(ticket)] = grant

    def take(self, ticket: bytes, job_id: int, attempt: int, role: fr.ConnRole = fr.ConnRole.CONTROL,
             peer: Peer | None = None) -> Grant | None:
        """The grant for this ticket, removed so it can never be used again; None if unknown or stale.
        Refused (and the ticket left as it was) when ``peer`` is not the one the ticket is bound to."""
        with self._lock:
            key = self._key(ticket)
            grant = self._grants.get(key)
            if grant is None or (grant.job_id, grant.attempt, grant.role) != (job_id, attempt, role):
                return None
            expired = grant.expires_at < self._clock()
            if not expired:
                why = grant.bind.refusal(peer)
                if why:
                    raise Refused(why)
            if not grant.reusable or expired:
                del self._grants[key]
        if expired:
            grant.on_expired()
            return None
        return grant

    def revoke(self, job_id: int, attempt: int | None = None, *, reusable: bool = False) -> bool:
        """Drop the grants of this attempt (every attempt: ``None``); a reusable one only if ``reusable``."""
        with self._lock:
            keys = [k for k, g in self._grants.items()
                    if g.job_id == job_id and attempt in (None, g.attempt) and (reusable or not g.reusable)]
            for k in keys:
                del self._grants[k]
        return bool(keys)

    def discard(self, tickets: list[bytes]) -> None:
        """Drop these tickets if still unused (a session's own data tickets, whatever else shares its ids)."""
        with self._lock:
            for t in tickets:
                self._grants.pop(self._key(t), None)

    def expire(self) -> None:
        now = self._clock()
        with self._lock:
            stale = [(k, g) for k, g in self._grants.items() if g.expires_at < now]
            for k, _ in stale:
                del self._grants[k]
        for _, g in stale:
            g.on_expired()


class DataServer:
    """Listening socket plus one thread per connection.

    A connection is a stranger until its HELLO shows a valid ticket: strangers live within the
    ``Admission`` budget (``max_pending`` overall, ``max_pending_per_source`` per address) and must finish the
    handshake within ``handshake_timeout`` of accept; only then do they take one of the ``max_connections``
    places of authenticated transfers.
    """

    def __init__(self, host: str, port: int, tickets: TicketBook, cfg: AgentConfig, *,
                 tls_contexts: tls.TlsContexts | None = None) -> None:
        """Timeouts and budgets come from ``cfg`` (tests pass ``AgentConfig()`` or a ``replace`` of it)."""
        self.tickets = tickets
        self.tls = tls_contexts  # None: this agent has no certificate and takes plaintext only
        self.handshake_timeout = cfg.handshake_timeout
        self.io_timeout = cfg.io_timeout
        self._slots = threading.BoundedSemaphore(cfg.max_connections)
        self.admission = Admission(cfg.max_pending, cfg.max_pending_per_source, cfg.handshake_timeout)
        self._lock = threading.Lock()
        self._conns: dict[socket.socket, tuple[int, int] | None] = {}
        self._threads: set[threading.Thread] = set()
        self._stopping = threading.Event()
        self._dropped = 0  # strangers dropped since the last warning about them
        self._warned = 0.0
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(128)
        self.address: tuple[str, int] = self._sock.getsockname()[:2]
        self._acceptor = threading.Thread(target=self._accept_loop, name="zc-data-accept", daemon=True)

    def start(self) -> None:
        self._acceptor.start()

    def connections(self) -> tuple[int, int]:
        """Open data-port connections: (admitted with a ticket, still before one): control and data streams."""
        with self._lock:
            admitted = sum(1 for ref in self._conns.values() if ref is not None)
            return admitted, len(self._conns) - admitted

    def stop(self) -> None:
        self._stopping.set()
        shut(self._sock)
        self._acceptor.join(5)
        self._sock.close()
        with self._lock:
            conns = list(self._conns)
            threads = list(self._threads)
        for c in conns:
            shut(c)
        for t in threads:
            t.join(5)

    def abort(self, job_id: int, attempt: int) -> None:
        """Drop the live connection of this attempt, if any (cancel)."""
        with self._lock:
            conns = [c for c, ref in self._conns.items() if ref == (job_id, attempt)]
        for c in conns:
            shut(c)

    def _accept_loop(self) -> None:
        poller = select.poll()  # not select(): the listening fd may be numbered past FD_SETSIZE
        poller.register(self._sock, select.POLLIN)
        while not self._stopping.is_set():
            deadline = self.admission.next_deadline()
            timeout = None if deadline is None else (max(0.0, deadline - time.monotonic()) + 0.01) * 1000
            try:
                ready = poller.poll(timeout)
            except OSError:
                return
            self._note_dropped(self.admission.expire())
            if not ready or self._stopping.is_set():
                continue
            try:
                conn, peer = self._sock.accept()
            except OSError as err:
                if self._stopping.is_set():
                    return
                log.warning("data port accept failed", extra=kv(error=err))
                time.sleep(0.05)  # e.g. out of fds: don't spin
                continue
            self._note_dropped(self.admission.admit(conn, peer[0]))
            t = threading.Thread(target=self._serve, args=(conn, peer), name="zc-data-conn", daemon=True)
            with self._lock:
                self._conns[conn] = None
                self._threads.add(t)
            try:
                t.start()
            except RuntimeError as err:  # out of threads: this connection goes, the port keeps serving
                log.warning("data connection dropped: cannot start a thread", extra=kv(peer=peer[0], error=err))
                self.admission.settle(conn)
                with self._lock:
                    self._conns.pop(conn, None)
                    self._threads.discard(t)
                conn.close()

    def _note_dropped(self, dropped: list[Waiting]) -> None:
        """One warning per few seconds, however many strangers a flood makes us drop."""
        if not dropped:
            return
        self._dropped += len(dropped)
        now = time.monotonic()
        if now - self._warned >= 5.0:
            log.warning("data connections dropped before authentication",
                        extra=kv(count=self._dropped, peer=dropped[-1].source, reason=dropped[-1].why))
            self._dropped, self._warned = 0, now

    def _serve(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        priority.apply_to_this_thread()
        slot = False
        stream: Stream = conn
        try:
            accepted = self._handshake(conn, peer)
            if accepted is None:
                return
            ch, hello, grant = accepted
            slot, stream = True, ch.sock
            with self._lock:
                self._conns[conn] = (grant.job_id, grant.attempt)
            stream.settimeout(self.io_timeout)
            with log_context(**attempt_fields(grant.job_id, grant.attempt)):
                grant.serve(ch, hello)
        except Exception:  # a session must never take the agent down
            log.exception("data session crashed", extra=kv(peer=peer[0]))
        finally:
            self.admission.settle(conn)  # a no-op unless we failed before the handshake settled it
            with self._lock:
                self._conns.pop(conn, None)
                self._threads.discard(threading.current_thread())
            if stream is not conn:
                stream.close()
            conn.close()
            if slot:
                self._slots.release()

    def _handshake(self, conn: socket.socket, peer: tuple[str, int]) -> tuple[Channel, Hello, Grant] | None:
        """HELLO within the deadline, a free place for an authenticated transfer, and a valid ticket; None
        (after telling the peer why, when it can still hear it) otherwise. On success the caller owns one slot."""
        # Each read waits at most the whole budget; the acceptor enforces the deadline across reads.
        conn.settimeout(self.handshake_timeout)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ch = Channel(conn)
        error: BaseException | None = None
        try:
            ch = self._secure(conn, peer[0])
            hello = _read_hello(ch)
        except (ProtocolError, OSError, ValueError) as err:
            error = err
        dropped = self.admission.settle(conn)
        accepted = None
        if dropped or error is not None:
            if not dropped:  # ours was sent when we dropped it
                log.warning("data connection dropped before authentication", extra=kv(peer=peer[0], error=error))
                _refuse(ch, "protocol error before authentication")
        elif not self._slots.acquire(blocking=False):
            log.warning("data connection refused: too many transfers", extra=kv(peer=peer[0], job=hello.job_id))
            _refuse(ch, "too many transfers running on this agent; try again later")
        else:
            accepted = self._authenticate(ch, hello, peer[0])
            if accepted is None:
                self._slots.release()
        if accepted is None and ch.sock is not conn:
            ch.sock.close()
        return accepted

    def _secure(self, conn: socket.socket, address: str) -> Channel:
        """The channel the connection will be read through (TLS when it opened with a ClientHello), and
        who is on it (``Channel.peer``). TLS runs on a duplicate of the descriptor, so the admission budget
        can still shut the connection down at its deadline."""
        who = Peer(normalise(address))
        if not tls.starts_tls(conn):
            ch = Channel(conn)
        elif self.tls is None:
            raise tls.TlsUnavailable("an encrypted connection reached an agent without a certificate (--insecure)")
        else:
            stream, name = tls.accept(self.tls, conn.dup(), time.monotonic() + self.handshake_timeout)
            ch, who = Channel(stream), Peer(who.address, name, stream.transport)
        ch.peer = who
        return ch

    def _authenticate(self, ch: Channel, hello: Hello, address: str) -> tuple[Channel, Hello, Grant] | None:
        """The grant of a valid ticket presented by the peer it is bound to; None after refusing."""
        who = ch.peer
        try:
            grant = self.tickets.take(hello.ticket, hello.job_id, hello.attempt, hello.role, who)
        except Refused as err:
            log.warning("data connection refused: the ticket is bound to another peer",
                        extra=kv(peer=address, identity=who.identity if who else "", job=hello.job_id,
                                 attempt=hello.attempt, reason=err))
            _refuse(ch, str(err))
            return None
        if grant is None:
            log.warning("data connection refused: bad ticket", extra=kv(peer=address, job=hello.job_id,
                                                                         attempt=hello.attempt))
            _refuse(ch, "unknown, expired or already used ticket")
            return None
        return ch, hello, grant


def _read_hello(ch: Channel) -> Hello:
    kind, payload = ch.recv_frame(limit=256)
    if kind is not fr.T.HELLO:
        raise ProtocolError(f"expected HELLO, got {kind.name}")
    return fr.decode_hello(payload)


def _refuse(ch: Channel, reason: str) -> None:
    try:
        ch.send(fr.encode_text(fr.T.REFUSE, reason))
    except OSError:
        pass
