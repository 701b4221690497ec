"""Strangers at the data port: a deadline for the whole handshake and a budget of their own (issue 9,
finding 5). The table tests drive ``Admission`` with a fake clock; the server tests use real sockets."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from zcrepl.agent.transfer import frame as fr
from zcrepl.agent.transfer.admission import Admission
from zcrepl.agent.transfer.channel import Channel
from zcrepl.agent.transfer.frame import Hello
from zcrepl.agent.transfer.server import DataServer, Grant, TicketBook
from zcrepl.core.config import AgentConfig


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def pairs() -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    made: list[tuple[socket.socket, socket.socket]] = []
    yield made
    for a, b in made:
        a.close()
        b.close()


def _conn(pairs: list[tuple[socket.socket, socket.socket]]) -> socket.socket:
    ours, theirs = socket.socketpair()
    pairs.append((ours, theirs))
    return ours


def _closed(pairs: list[tuple[socket.socket, socket.socket]], i: int) -> bool:
    theirs = pairs[i][1]
    theirs.setblocking(False)
    try:
        data = theirs.recv(4096)
    except BlockingIOError:
        return False
    return data == b"" or data[:1] == bytes([fr.T.REFUSE])


def test_the_oldest_stranger_of_the_busiest_source_makes_room(pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    adm = Admission(max_pending=4, max_per_source=3, timeout=10, clock=Clock())
    for source in ("10.0.0.9", "10.0.0.9", "10.0.0.9", "10.0.0.1"):
        assert adm.admit(_conn(pairs), source) == []
    assert adm.count() == 4
    # Full: a fifth stranger pushes out the oldest of 10.0.0.9 (three waiting), not 10.0.0.1's only one.
    dropped = adm.admit(_conn(pairs), "10.0.0.2")
    assert [d.source for d in dropped] == ["10.0.0.9"] and dropped[0].sock is pairs[0][0]
    assert "more than 4 connections without a ticket" in dropped[0].why
    assert _closed(pairs, 0) and not _closed(pairs, 3)
    assert adm.settle(pairs[0][0]).startswith("more than 4")  # its owner learns why
    # Full again: the busiest source is still 10.0.0.9 (two waiting), and its oldest goes.
    dropped = adm.admit(_conn(pairs), "10.0.0.9")
    assert [d.sock for d in dropped] == [pairs[1][0]] and adm.count() == 4


def test_per_source_share(pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    adm = Admission(max_pending=100, max_per_source=2, timeout=10, clock=Clock())
    adm.admit(_conn(pairs), "a")
    adm.admit(_conn(pairs), "b")
    adm.admit(_conn(pairs), "a")
    dropped = adm.admit(_conn(pairs), "a")
    assert [d.sock for d in dropped] == [pairs[0][0]] and "from a without a ticket" in dropped[0].why
    assert adm.count() == 3


def test_deadline_counts_from_accept(pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    clock = Clock()
    adm = Admission(max_pending=10, max_per_source=10, timeout=5, clock=clock)
    adm.admit(_conn(pairs), "a")
    clock.now += 3
    adm.admit(_conn(pairs), "a")
    assert adm.next_deadline() == 105.0
    clock.now += 2.5
    late = adm.expire()
    assert [w.sock for w in late] == [pairs[0][0]] and "no complete HELLO within 5s" in late[0].why
    assert adm.settle(pairs[1][0]) == ""  # done in time: it just stops waiting
    assert adm.count() == 0 and adm.next_deadline() is None


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[DataServer]:
    """A data server with default budgets and the handshake timeout the test names."""
    cfg = replace(AgentConfig(), handshake_timeout=getattr(request, "param", 1.0))
    s = DataServer("127.0.0.1", 0, TicketBook(), cfg)
    s.start()
    yield s
    s.stop()


def test_a_trickled_hello_is_cut_at_the_deadline(server: DataServer) -> None:
    """One byte every 0.2 s never trips a per-read timeout of 1 s; the whole HELLO would take ~11 s."""
    hello = fr.encode_hello(Hello(1, 1, os.urandom(32)))
    with socket.create_connection(server.address, timeout=10) as sock:
        sent = 0
        try:
            for byte in hello:
                sock.sendall(bytes([byte]))
                sent += 1
                time.sleep(0.2)
        except OSError:
            pass  # the server closed it under us
        kind, payload = Channel(sock).recv_frame()
    assert sent < len(hello), "the server waited for the whole trickled HELLO"
    assert kind is fr.T.REFUSE and "no complete HELLO within 1s" in fr.decode_text(payload)


@pytest.mark.parametrize("server", [10.0], indirect=True)
def test_strangers_never_take_the_places_of_ticket_holders(server: DataServer) -> None:
    """More silent strangers than there are places for transfers (64), and the ticket holder still gets in."""
    served: list[Hello] = []
    ticket = os.urandom(32)
    server.tickets.register(ticket, Grant(7, 1, time.monotonic() + 30, lambda ch, h: served.append(h)))
    strangers = [socket.create_connection(server.address, timeout=10) for _ in range(80)]
    try:
        with socket.create_connection(server.address, timeout=10) as sock:
            sock.sendall(fr.encode_hello(Hello(7, 1, ticket)))
            assert sock.recv(1) == b""  # served (our grant closes at once) rather than refused
        assert [h.job_id for h in served] == [7]
    finally:
        for s in strangers:
            s.close()
