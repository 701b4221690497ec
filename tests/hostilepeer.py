"""A hostile source agent for the data-plane tests: it registers with the controller like any agent, takes
the ticket the controller mints for a job, and then speaks the data protocol by hand."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from zchelpers import FakeAgent, wait_for

from zcrepl.agent.transfer import entrycodec as ec
from zcrepl.agent.transfer import frame as fr
from zcrepl.agent.transfer.channel import Channel
from zcrepl.agent.transfer.frame import Entry, FileHead, Hello, Kind
from zcrepl.cli.client import ControllerClient
from zcrepl.core.errors import ProtocolError
from zcrepl.core.types import Endpoint, JobOptions, JobState

ROOT = Entry(Kind.DIR, b"", 0o755, 1_000_000_000_000_000_000)


def whole(index: int, size: int) -> FileHead:
    return FileHead(index, 0, size, size, 0, 0o644)


def f(path: bytes, size: int = 0) -> Entry:
    return Entry(Kind.FILE, path, 0o644, 1_000_000_000_000_000_000, size)


class Session:
    """One data connection, authenticated with the ticket the controller minted for a fresh job."""

    def __init__(self, client: ControllerClient, evil: FakeAgent, dst: Path) -> None:
        self.job = client.submit(Endpoint("evil", b"/evil/src"), Endpoint("hostB", os.fsencode(dst)),
                                 JobOptions(max_attempts=1))
        order = evil.next_order("send")
        assert order.job_id == self.job.id
        host, port = order.dest_data_address.rsplit(":", 1)
        self.extra: list[socket.socket] = []
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.ch = Channel(self.sock)
        self.ticket = bytes(order.ticket)
        self.attempt = order.attempt
        self.ch.send(fr.encode_hello(Hello(order.job_id, order.attempt, self.ticket)))
        kind, payload = self.ch.recv_frame()
        assert kind is fr.T.ACCEPT, fr.decode_text(payload)
        self.data_tickets = fr.decode_accept(payload)
        self.address = (host, int(port))

    def data(self, ticket: bytes | None = None) -> Channel:
        """Open a data connection with one of the tickets the receiver minted for this session."""
        sock = socket.create_connection(self.address, timeout=10)
        self.extra.append(sock)
        ch = Channel(sock)
        ch.send(fr.encode_hello(Hello(self.job.id, self.attempt, ticket or self.data_tickets[0], fr.ConnRole.DATA, 0)))
        return ch

    def entries(self, *entries: Entry) -> None:
        self.ch.send(ec.encode_entries(list(entries)))

    def end_manifest(self, count: int) -> list[int]:
        """Send MANIFEST_END and collect NEEDs up to NEED_END."""
        self.ch.send(fr.encode_u64(fr.T.MANIFEST_END, count))
        needs: list[int] = []
        while True:
            kind, payload = self.ch.recv_frame()
            if kind is fr.T.NEED:
                needs += fr.decode_need(payload)
            elif kind is fr.T.NEED_END:
                return needs
            elif kind is not fr.T.MANIFEST_ACK:  # one per batch: the sender's window (window.py)
                raise AssertionError(f"unexpected {kind.name}: {payload[:200]!r}")

    def refused(self, within: float = 10.0) -> str:
        """The receiver must drop us within ``within`` seconds: the ABORT text, or ``closed: ...`` on EOF or reset.

        Frames the receiver sends before it gives up (NEED, BASIS_HINT, ...) are skipped; a RESULT means the session
        was accepted to the end, and silence past the deadline means it was not refused: both fail the test.
        """
        self.sock.settimeout(within)
        seen: list[str] = []
        try:
            while True:
                kind, payload = self.ch.recv_frame()
                if kind is fr.T.ABORT:
                    return fr.decode_text(payload)
                assert kind is not fr.T.RESULT, f"the receiver finished the session instead of refusing: {payload!r}"
                seen.append(kind.name)
        except TimeoutError as err:
            self.close()  # the failure is this test's alone: no socket left open for the next test's leak check
            raise AssertionError(f"no ABORT and no EOF within {within} s (frames seen: {seen})") from err
        except ProtocolError as err:
            if "connection closed by the peer" not in str(err):
                raise
            return f"closed: {err}"
        except (ConnectionResetError, BrokenPipeError) as err:
            return f"closed: {err}"

    def close(self) -> None:
        self.sock.close()
        for sock in self.extra:
            sock.close()


def job_failed(client: ControllerClient, job_id: int) -> str:
    job = wait_for(lambda: (j := client.job(job_id)).state.final and j, 20, what=f"job {job_id} to end")
    assert job.state is JobState.FAILED, job
    return job.error



