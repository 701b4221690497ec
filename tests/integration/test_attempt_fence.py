"""Attempts at the agents: the destination's fence (two attempts of one job never write there at the same time)
and threads that report FAILED on any exception. Two real Attempts (hostA sends, hostB receives) in one
process, over real sockets and files; orders are played by the test as the controller would send them."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from zchelpers import diff_trees, make_tree, snapshot, wait_for

from zcrepl.agent.attempts import Attempts
from zcrepl.agent.exports import Exports
from zcrepl.agent.transfer.limits import SessionLimits
from zcrepl.agent.transfer.server import DataServer, TicketBook
from zcrepl.core.config import AgentConfig
from zcrepl.core.types import CancelOrder, JobOptions, Phase, ReceiveOrder, Role, SendOrder, TransferReport


@dataclass
class Host:
    name: str
    export: Path
    reports: list[TransferReport] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.export.mkdir(parents=True, exist_ok=True)
        self.exports = Exports(self.name, (os.fsencode(self.export),))
        self.tickets = TicketBook()
        self.data = DataServer("127.0.0.1", 0, self.tickets, replace(AgentConfig(), io_timeout=10))
        self.data.start()
        self.transfers = Attempts(self.name, self.exports, self.data, self.tickets, self._report,
                                  limits=SessionLimits())

    def _report(self, r: TransferReport) -> None:
        with self.lock:
            self.reports.append(r)

    def seen(self, attempt: int, phase: Phase) -> list[TransferReport]:
        with self.lock:
            return [r for r in self.reports if (r.attempt, r.phase) == (attempt, phase)]

    def close(self) -> None:
        self.transfers.cancel_all("test over")
        self.data.stop()
        self.transfers.join(10)
        self.exports.close()


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[tuple[Host, Host]]:
    a, b = Host("hostA", tmp_path / "a"), Host("hostB", tmp_path / "b")
    yield a, b
    a.close()
    b.close()


def _orders(a: Host, b: Host, attempt: int, **options: int) -> tuple[ReceiveOrder, SendOrder]:
    ticket = os.urandom(32)
    opts = JobOptions(**options)
    dst = os.fsencode(b.export / "copy")
    return (ReceiveOrder(job_id=7, attempt=attempt, ticket=ticket, path=dst, options=opts, source_host="hostA"),
            SendOrder(job_id=7, attempt=attempt, ticket=ticket, path=os.fsencode(a.export / "src"), options=opts,
                      dest_host="hostB", dest_data_address=f"127.0.0.1:{b.data.address[1]}", dest_path=dst))


def test_a_newer_attempt_waits_for_the_older_one_to_stop_and_the_older_is_refused(hosts: tuple[Host, Host]) -> None:
    a, b = hosts
    make_tree(a.export / "src", files=10, big=32 << 20)
    recv1, send1 = _orders(a, b, 1, bwlimit=4 << 20)
    b.transfers.receive(recv1)
    assert b.seen(1, Phase.READY)
    a.transfers.send(send1)
    # Attempt 1 is writing at the destination (the controller lost track of it: its agent was cut off).
    wait_for(lambda: any(r.phase is Phase.PROGRESS and r.stats.bytes_done > 4 << 20 for r in a.reports), 30,
             what="attempt 1 to write")

    recv2, send2 = _orders(a, b, 2)
    b.transfers.receive(recv2)
    ready2 = wait_for(lambda: b.seen(2, Phase.READY), 20, what="attempt 2 to be ready")[0]
    with b.lock:
        order = [(r.attempt, r.phase) for r in b.reports]
    # Attempt 1 had stopped writing (its end reported) before attempt 2 was ready to receive.
    assert (1, Phase.FAILED) in order and order.index((1, Phase.FAILED)) < order.index((2, Phase.READY)), order
    assert ready2.role is Role.RECEIVER
    wait_for(lambda: a.seen(1, Phase.FAILED), 20, what="the old sender to give up")

    # An order for the older attempt arriving late (a controller that lost track of it) is refused.
    late, _ = _orders(a, b, 1)
    b.transfers.receive(late)
    refused = wait_for(lambda: [r for r in b.seen(1, Phase.FAILED) if "older than attempt 2" in r.error], 10,
                       what="the late order to be refused")
    assert "hostB" in refused[0].error

    a.transfers.send(send2)
    wait_for(lambda: b.seen(2, Phase.DONE) and a.seen(2, Phase.DONE), 60, what="attempt 2 to finish")
    assert not diff_trees(snapshot(a.export / "src"), snapshot(b.export / "copy"))
    assert not list((b.export / "copy").rglob(".zc.*.tmp"))


def test_a_cancelled_attempt_never_becomes_ready_after_the_older_one_stops(hosts: tuple[Host, Host]) -> None:
    a, b = hosts
    make_tree(a.export / "src", files=5, big=16 << 20)
    recv1, send1 = _orders(a, b, 1, bwlimit=2 << 20)
    b.transfers.receive(recv1)
    a.transfers.send(send1)
    wait_for(lambda: any(r.phase is Phase.PROGRESS and r.stats.bytes_done > 1 << 20 for r in a.reports), 30,
             what="attempt 1 to write")
    recv2, _ = _orders(a, b, 2)
    b.transfers.receive(recv2)
    b.transfers.cancel(CancelOrder(7, 2, "cancelled by the operator", True))
    wait_for(lambda: b.seen(1, Phase.FAILED), 20, what="attempt 1 to stop")
    wait_for(lambda: not b.transfers.refs(), 20, what="nothing left running at the destination")
    assert not b.seen(2, Phase.READY)


def test_a_crash_in_a_same_host_copy_reports_failed_at_once(hosts: tuple[Host, Host],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from zcrepl.agent import attempt_local

    a, _ = hosts
    make_tree(a.export / "src", files=5)

    def crash(self: object) -> None:
        raise RuntimeError("a bug in the copier")

    monkeypatch.setattr(attempt_local.LocalCopy, "run", crash)
    ticket, opts, dst = os.urandom(32), JobOptions(), os.fsencode(a.export / "copy")
    a.transfers.receive(ReceiveOrder(job_id=9, attempt=1, ticket=ticket, path=dst, options=opts, source_host="hostA"))
    a.transfers.send(SendOrder(job_id=9, attempt=1, ticket=ticket, path=os.fsencode(a.export / "src"), options=opts,
                               dest_host="hostA", dest_data_address="127.0.0.1:1", dest_path=dst))
    failed = wait_for(lambda: a.seen(1, Phase.FAILED), 10, what="the crash to be reported")[0]
    assert "internal error" in failed.error and "a bug in the copier" in failed.error and failed.retryable
    wait_for(lambda: not a.transfers.refs(), 10, what="the attempt to be forgotten")


def test_a_crash_in_a_receive_session_reports_failed_at_once(hosts: tuple[Host, Host],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from zcrepl.agent.transfer.receive import ReceiveSession

    a, b = hosts
    make_tree(a.export / "src", files=5)

    def crash(self: object, *args: object) -> None:
        raise KeyError("a bug in the receiver")

    monkeypatch.setattr(ReceiveSession, "serve_control", crash)
    recv, send = _orders(a, b, 1)
    b.transfers.receive(recv)
    a.transfers.send(send)
    failed = wait_for(lambda: b.seen(1, Phase.FAILED), 10, what="the crash to be reported")[0]
    assert "internal error" in failed.error and "a bug in the receiver" in failed.error
    wait_for(lambda: a.seen(1, Phase.FAILED), 20, what="the sender to learn it")
