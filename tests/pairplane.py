"""The data plane without daemons or TCP: a Sender's connections are socketpair ends (``SendSpec.dial``) whose
other ends are served in this process, by the real ticket book and ReceiveSession or by a test's own peer."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator

from zcrepl.agent.transfer import frame as fr
from zcrepl.agent.transfer.channel import Channel
from zcrepl.agent.transfer.sendio import SendSpec
from zcrepl.agent.transfer.server import TicketBook


class Pairs:
    """A dial function for SendSpec: each connection the sender opens runs ``serve`` on its other end, on a
    thread of its own; ``close`` waits for those threads and closes what is left."""

    def __init__(self, serve: Callable[[socket.socket], None]) -> None:
        self.serve = serve
        self.threads: list[threading.Thread] = []
        self.socks: list[socket.socket] = []

    def dial(self, _spec: SendSpec) -> socket.socket:
        mine, theirs = socket.socketpair()
        theirs.settimeout(30)
        self.socks.append(theirs)
        t = threading.Thread(target=self._run, args=(theirs,), name="zc-test-pair", daemon=True)
        self.threads.append(t)
        t.start()
        return mine

    def _run(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            self.serve(sock)

    def close(self) -> None:
        for t in self.threads:
            t.join(30)
        for s in self.socks:
            s.close()
        assert not any(t.is_alive() for t in self.threads), "a served connection never ended"


def ticket_server(tickets: TicketBook) -> Callable[[socket.socket], None]:
    """What the data port does once a connection is admitted: HELLO, the ticket's grant, its session."""

    def serve(sock: socket.socket) -> None:
        ch = Channel(sock)
        kind, payload = ch.recv_frame(limit=256)
        assert kind is fr.T.HELLO, kind
        hello = fr.decode_hello(payload)
        grant = tickets.take(hello.ticket, hello.job_id, hello.attempt, hello.role)
        if grant is None:
            ch.send(fr.encode_text(fr.T.REFUSE, "unknown, expired or already used ticket"))
            return
        grant.serve(ch, hello)

    return serve


@contextlib.contextmanager
def pairs(serve: Callable[[socket.socket], None]) -> Iterator[Pairs]:
    p = Pairs(serve)
    try:
        yield p
    finally:
        p.close()
