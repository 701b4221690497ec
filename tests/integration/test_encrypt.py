"""The encrypted data plane in one process, over real loopback sockets, real certificates and real files:
bytes on the wire, identities both ways, and every transfer path (streams, ranges, delta, resume) under TLS."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from zchelpers import ClusterPKI, diff_trees, make_tree, rewrite, snapshot, wait_for

from zcrepl.agent.transfer import send_worker, tls
from zcrepl.agent.transfer.cancel import Cancel
from zcrepl.agent.transfer.channel import Channel
from zcrepl.agent.transfer.frame import Hello
from zcrepl.agent.transfer.peer import Binding
from zcrepl.agent.transfer.receive import ReceiveSession, ReceiveSpec
from zcrepl.agent.transfer.saferoot import SafeRoot
from zcrepl.agent.transfer.send import Sender, SendSpec
from zcrepl.agent.transfer.server import DataServer, Grant, TicketBook
from zcrepl.core import pki as zpki
from zcrepl.core.config import AgentConfig
from zcrepl.core.errors import TransferError
from zcrepl.core.trust import TlsPaths, Trust
from zcrepl.core.types import Compress, JobOptions, TransferStats

MARKER = b"ZC-SECRET-MARKER-7f3a9c"
HOST_A = Binding("hostA", frozenset({"127.0.0.1"}))


class Relay:
    """A TCP relay the test puts in front of a data port; it keeps every byte the sender sent through it."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self.captured = bytearray()
        self.connections = 0
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self.connections += 1
                self._socks += [client, upstream]
                for a, b, keep in ((client, upstream, True), (upstream, client, False)):
                    t = threading.Thread(target=self._pump, args=(a, b, keep), daemon=True)
                    self._threads.append(t)
                    t.start()

    def _pump(self, src: socket.socket, dst: socket.socket, keep: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                if keep:
                    with self._lock:
                        self.captured += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self._acceptor.join(5)
        for s in self._socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(5)
        for s in self._socks:
            s.close()


class TlsPlane:
    """A receiving data server with agent ``name``'s certificate, and a way to run senders against it."""

    def __init__(self, dst_export: Path, pki: ClusterPKI, name: str = "hostB") -> None:
        self.pki = pki
        self.tickets = TicketBook()
        self.server = DataServer("127.0.0.1", 0, self.tickets, AgentConfig(),
                                 tls_contexts=tls.TlsContexts(pki.trust("agent", name)))
        self.server.start()
        self.export = SafeRoot(os.fsencode(dst_export))
        self.results: list[Any] = []
        self.done = threading.Event()
        self.jobs = 0

    def grant(self, rel: bytes, opts: JobOptions, bind: Binding) -> tuple[int, bytes]:
        """A controller ticket for a new job into ``rel``, bound like the controller would bind it."""
        self.jobs += 1
        job, ticket = self.jobs, os.urandom(32)

        def serve(ch: Channel, hello: Hello) -> None:
            session = ReceiveSession(ReceiveSpec(job, 1, self.export, tuple(rel.split(b"/")), opts, "dst",
                                                 bind=bind), self.tickets)
            try:
                self.results.append(session.serve_control(ch, hello))
            except Exception as err:
                self.results.append(err)
            finally:
                self.done.set()

        self.tickets.register(ticket, Grant(job, 1, time.monotonic() + 30, serve, bind=bind))
        return job, ticket

    def send(self, job: int, ticket: bytes, src: Path, opts: JobOptions, *, sender: str = "hostA",
             address: tuple[str, int] | None = None, cancel: Cancel | None = None,
             progress: Any = None) -> TransferStats:
        self.done.clear()
        spec = SendSpec(job, 1, ticket, address or self.server.address, opts, cancel or Cancel(),
                        progress or (lambda _s: None), encrypt=opts.encrypt, dest="hostB",
                        contexts=tls.TlsContexts(self.pki.trust("agent", sender)))
        root = SafeRoot(os.fsencode(src))
        try:
            return Sender(spec, root).run()
        finally:
            root.close()

    def run(self, src: Path, rel: bytes, *, address: tuple[str, int] | None = None, **options: Any
            ) -> tuple[TransferStats, Any]:
        opts = JobOptions(**{"encrypt": True, **options})
        job, ticket = self.grant(rel, opts, Binding("hostA", HOST_A.addresses, opts.encrypt))
        stats = self.send(job, ticket, src, opts, address=address)
        assert self.done.wait(10)
        return stats, self.results[-1]

    def close(self) -> None:
        self.server.stop()
        self.export.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> ClusterPKI:
    return ClusterPKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def plane(tmp_path: Path, pki: ClusterPKI) -> Iterator[TlsPlane]:
    (tmp_path / "dst").mkdir()
    p = TlsPlane(tmp_path / "dst", pki)
    yield p
    p.close()


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src") / "tree"
    make_tree(src, files=2000, big=40 << 20)  # several manifest batches: NEEDs come back while ENTRIES go out
    return src


def _secret_tree(root: Path) -> None:
    root.mkdir()
    (root / "big.bin").write_bytes((MARKER + os.urandom(4000)) * 2048)  # 8 MiB, the marker every 4 KiB
    for i in range(50):
        (root / f"small-{i}.txt").write_bytes(MARKER + b" file %d" % i)
    (root / (MARKER.decode() + "-name.txt")).write_bytes(b"its name is the secret")


def test_bytes_are_encrypted_on_the_wire(plane: TlsPlane, tmp_path: Path) -> None:
    """A relay the test controls sits in front of the data port: a plaintext job shows the marker in file
    bodies and names, an encrypted one never does, and both copies are exact."""
    src = tmp_path / "secret"
    _secret_tree(src)
    seen = {}
    for encrypt in (False, True):
        relay = Relay(plane.server.address)
        try:
            stats, result = plane.run(src, b"plain" if not encrypt else b"sealed", address=relay.address,
                                      encrypt=encrypt, streams=2)
        finally:
            relay.close()
        assert isinstance(result, TransferStats), result
        assert not diff_trees(snapshot(src), snapshot(tmp_path / "dst" / ("sealed" if encrypt else "plain")))
        assert relay.connections == 3  # control + two data connections, all through the relay
        assert len(relay.captured) > 8_000_000
        seen[encrypt] = (bytes(relay.captured), stats.transport, result.transport)
    plain, sealed = seen[False][0], seen[True][0]
    assert plain.count(MARKER) > 2000  # the method sees the secret when it is there...
    assert MARKER not in sealed  # ...and it is not there under TLS: neither contents nor names
    assert sealed[0] == tls.TLS_RECORD_TYPE_HANDSHAKE
    assert seen[False][1:] == ("none", "none") and seen[True][1:] == ("tls", "tls")


@pytest.mark.parametrize("streams", [1, 3])
def test_encrypted_copies_are_exact_on_every_path(plane: TlsPlane, tree: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch, streams: int) -> None:
    ranges: list[tuple[int, int]] = []
    real = send_worker.DataWorker.send_range

    def spy(self: Any, index: int, offset: int, length: int) -> None:
        if length >= 1 << 20:
            ranges.append((offset, length))
        real(self, index, offset, length)

    monkeypatch.setattr(send_worker.DataWorker, "send_range", spy)
    stats, result = plane.run(tree, b"copy", streams=streams)
    assert isinstance(result, TransferStats), result
    assert not diff_trees(snapshot(tree), snapshot(tmp_path / "dst" / "copy"))
    assert stats.bytes_done >= 40 << 20 and stats.errors == 0 and stats.transport == "tls"
    if streams > 1:  # the big file went as ranges over several encrypted connections
        assert sorted(ranges) == [(0, 20 << 20), (20 << 20, 20 << 20)]
    again, _ = plane.run(tree, b"copy", streams=streams)
    assert (again.files_done, again.bytes_done) == (0, 0)


def test_the_ktls_branch_sends_with_sendfile_on_the_tls_socket(plane: TlsPlane, tree: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Where Python reports kTLS for sending, file bytes go through SSLSocket.sendfile (here Python 3.11's
    own fallback inside it does the encrypting: this kernel has no kTLS), and the transfer says "ktls". Small
    files (send_worker.SMALL) are read into the connection's output buffer instead, on every transport."""
    sent = {"bytes": 0}
    real = tls.TlsStream.sendfile

    def counted(self: tls.TlsStream, fd: int, offset: int, count: int) -> int:
        n = real(self, fd, offset, count)
        sent["bytes"] += n
        return n

    monkeypatch.setattr(tls, "ktls_send", lambda _s: True)
    monkeypatch.setattr(tls.TlsStream, "sendfile", counted)
    relay = Relay(plane.server.address)
    try:
        stats, result = plane.run(tree, b"copy", streams=2, address=relay.address)
    finally:
        relay.close()
    assert isinstance(result, TransferStats), result
    assert not diff_trees(snapshot(tree), snapshot(tmp_path / "dst" / "copy"))
    assert sent["bytes"] >= 40 << 20 and stats.transport == "ktls"  # the big file's bytes, at least
    assert relay.captured[0] == tls.TLS_RECORD_TYPE_HANDSHAKE


def test_ktls_is_detected_only_where_python_exposes_it() -> None:
    class Obj:
        def __init__(self, answer: bool) -> None:
            self.answer = answer

        def uses_ktls_for_send(self) -> bool:
            return self.answer

    class Sock:
        def __init__(self, obj: object) -> None:
            self._sslobj = obj

    assert tls.ktls_send(Sock(Obj(True))) is True  # type: ignore[arg-type]
    assert tls.ktls_send(Sock(Obj(False))) is False  # type: ignore[arg-type]
    assert tls.ktls_send(Sock(object())) is False  # type: ignore[arg-type]  # Python 3.11, as here


def test_encrypted_delta_sends_only_changed_blocks(plane: TlsPlane, tmp_path: Path) -> None:
    src = tmp_path / "s"
    src.mkdir()
    big = src / "big.bin"
    big.write_bytes(os.urandom(24 << 20))
    plane.run(src, b"copy", streams=2)
    rewrite(big, 10 << 20, os.urandom(1 << 20))
    stats, result = plane.run(src, b"copy", streams=2)
    assert isinstance(result, TransferStats), result
    assert (tmp_path / "dst" / "copy" / "big.bin").read_bytes() == big.read_bytes()
    assert (1 << 20) <= stats.bytes_done <= (1 << 20) + 2 * (128 << 10), stats.bytes_done
    assert stats.wire_bytes < 2 << 20


def test_encrypted_interrupted_file_resumes_with_only_the_rest(plane: TlsPlane, tmp_path: Path) -> None:
    src = tmp_path / "s"
    src.mkdir()
    size = 48 << 20
    (src / "big.bin").write_bytes(os.urandom(size))
    cancel = Cancel()
    sent: list[int] = []

    def progress(s: TransferStats) -> None:
        sent.append(s.bytes_done)
        if s.bytes_done >= 16 << 20:
            cancel.set()

    opts = JobOptions(streams=2, bwlimit=24 << 20, encrypt=True)
    job, ticket = plane.grant(b"copy", opts, Binding("hostA", HOST_A.addresses, True))
    with pytest.raises(TransferError):
        plane.send(job, ticket, src, opts, cancel=cancel, progress=progress)
    assert plane.done.wait(10)
    first = max(sent)
    assert list((tmp_path / "dst" / "copy" / ".zc.partial").glob("*.part"))
    stats, result = plane.run(src, b"copy", streams=2)
    assert isinstance(result, TransferStats), result
    assert (tmp_path / "dst" / "copy" / "big.bin").read_bytes() == (src / "big.bin").read_bytes()
    assert stats.bytes_done <= size - first + (16 << 20), (stats.bytes_done, first)


# -- identities and refusals ----------------------------------------------------------------------------------
def test_the_sender_insists_on_the_destination_agent(tmp_path: Path, pki: ClusterPKI) -> None:
    """A data port answering with another agent's certificate gets nothing, not even the ticket."""
    (tmp_path / "dst").mkdir()
    impostor = TlsPlane(tmp_path / "dst", pki, name="hostC")
    try:
        opts = JobOptions(encrypt=True)
        job, ticket = impostor.grant(b"copy", opts, Binding("hostA", HOST_A.addresses, True))
        src = tmp_path / "s"
        _secret_tree(src)
        with pytest.raises(TransferError, match="answered with the certificate of agent hostC, not hostB"):
            impostor.send(job, ticket, src, opts)
        assert not impostor.results and not (tmp_path / "dst" / "copy").exists()
    finally:
        impostor.close()


def test_the_receiver_refuses_another_agents_certificate_and_keeps_the_ticket(plane: TlsPlane,
                                                                             tmp_path: Path) -> None:
    src = tmp_path / "s"
    _secret_tree(src)
    opts = JobOptions(encrypt=True)
    job, ticket = plane.grant(b"copy", opts, Binding("hostA", HOST_A.addresses, True))
    with pytest.raises(TransferError, match="this ticket is for agent hostA; the connection's certificate is agent "
                                            "hostC"):
        plane.send(job, ticket, src, opts, sender="hostC")
    with pytest.raises(TransferError, match="must be encrypted and the connection is plaintext"):
        plane.send(job, ticket, src, JobOptions(encrypt=False))
    assert not plane.results
    plane.send(job, ticket, src, opts)  # the real source still gets in with the same ticket
    assert plane.done.wait(10) and isinstance(plane.results[-1], TransferStats)
    assert not diff_trees(snapshot(src), snapshot(tmp_path / "dst" / "copy"))


def _handshake(plane: TlsPlane, ctx: Any) -> str:
    """Open a TLS connection with ``ctx`` and say HELLO; how it ended."""
    sock = socket.create_connection(plane.server.address, timeout=10)
    try:
        with ctx.wrap_socket(sock, server_hostname=zpki.AGENT_DNS) as s:
            ch = Channel(s)
            ch.send(b"\x01" + b"\x00" * 4)
            return repr(ch.recv_frame())
    except OSError as err:
        return f"failed: {err}"
    finally:
        sock.close()


def test_strangers_do_not_get_through_the_handshake(plane: TlsPlane, tmp_path: Path) -> None:
    stranger = ClusterPKI(tmp_path / "stranger")
    ctx = tls.context(stranger.trust("agent", "hostA").material, server=False)
    assert _handshake(plane, ctx).startswith("failed")  # another CA
    bare = ssl.create_default_context(cadata=Path(plane.pki.ca).read_text())
    bare.minimum_version = ssl.TLSVersion.TLSv1_3
    bare.check_hostname = False
    assert _handshake(plane, bare).startswith("failed")  # no client certificate


def test_a_revoked_agent_certificate_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    own = ClusterPKI(tmp_path / "own")
    own.issue("agent", "hostA")
    zpki.revoke(own.dir, "hostA")
    receiver = Trust(TlsPaths(own.ca, *own.issue("agent", "hostB"), own.crl), kind="agent")
    (tmp_path / "dst").mkdir()
    p = TlsPlane(tmp_path / "dst", own)
    p.server.tls = tls.TlsContexts(receiver)
    try:
        src = tmp_path / "s"
        _secret_tree(src)
        opts = JobOptions(encrypt=True)
        job, ticket = p.grant(b"copy", opts, Binding("hostA", HOST_A.addresses, True))
        with pytest.raises(TransferError):
            p.send(job, ticket, src, opts)
        assert not p.results
        wait_for(lambda: any("certificate of agent hostA is revoked" in str(r.__dict__.get("kv", {}).get("error"))
                             for r in caplog.records), 10, what="the receiver to log the revoked certificate")
    finally:
        p.close()


def test_strangers_trickling_a_tls_handshake_stay_within_the_budget(tmp_path: Path, pki: ClusterPKI) -> None:
    """A TLS ClientHello that never completes counts against the strangers' budget like a slow HELLO: when a
    newcomer needs its place, the oldest is dropped at once, long before its own deadline."""
    cfg = replace(AgentConfig(), handshake_timeout=60, max_pending_per_source=2)
    server = DataServer("127.0.0.1", 0, TicketBook(), cfg, tls_contexts=tls.TlsContexts(pki.trust("agent", "hostB")))
    server.start()
    socks = []
    try:
        for _ in range(3):
            s = socket.create_connection(server.address, timeout=20)
            s.sendall(bytes([tls.TLS_RECORD_TYPE_HANDSHAKE, 3, 1]))  # the start of a ClientHello, then nothing
            socks.append(s)
            wait_for(lambda: server.admission.count() >= min(len(socks), 2), 10, what="the stranger to wait")
        while socks[0].recv(100):  # the oldest was dropped to make room (its deadline is a minute away)
            pass
        socks[1].settimeout(0.2)
        with pytest.raises(TimeoutError):
            socks[1].recv(100)  # the others still wait for their handshakes
    finally:
        for s in socks:
            s.close()
        server.stop()


def test_encrypted_and_compressed(plane: TlsPlane, tmp_path: Path) -> None:
    """zstd pieces inside TLS records: an exact copy, and the wire carries the compressed size."""
    src = tmp_path / "logs"
    src.mkdir()
    (src / "app.log").write_bytes(b"".join(b"%08d GET /index.html 200 %d\n" % (i, i % 977) for i in range(200_000)))
    (src / "empty").write_bytes(b"")
    stats, result = plane.run(src, b"both", streams=2, compress=Compress.ON)
    assert isinstance(result, TransferStats), result
    assert not diff_trees(snapshot(src), snapshot(tmp_path / "dst" / "both"))
    assert stats.transport == "tls" and stats.bytes_done == (src / "app.log").stat().st_size
    assert stats.wire_bytes < stats.bytes_done // 4, stats
