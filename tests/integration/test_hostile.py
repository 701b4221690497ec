"""A hostile source agent with a valid ticket: every trick is refused, nothing lands outside the root,
and the receiving agent keeps serving (reliability.md §1a-1c, DESIGN §3 rules 2 and 4).

One cluster serves the whole module (a cluster per test cost a second each): both agents export one directory,
and each test's ``tmp_path`` is a fresh directory inside it, so ``tmp_path / "b" / "dst"`` is a destination
of its own and what one test leaves cannot meet the next."""

from __future__ import annotations

import os
import socket
import struct
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hostilepeer import ROOT, Session, f, job_failed, whole
from zchelpers import Cluster, FakeAgent, diff_trees, running, snapshot

from zcrepl.agent.transfer import frame as fr
from zcrepl.agent.transfer import opsframe as opf
from zcrepl.agent.transfer.channel import Channel
from zcrepl.agent.transfer.frame import Entry, FileHead, Hello, Kind
from zcrepl.cli.client import ControllerClient


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("hostile")
    with running(Cluster(base), base / "x", base / "x") as c:
        yield c


@pytest.fixture(scope="module")
def evil(cluster: Cluster) -> Iterator[FakeAgent]:
    agent = FakeAgent(cluster.controller_addr, "evil", pki=cluster.pki)
    cluster.wait_online("evil")
    yield agent
    agent.close()


@pytest.fixture(scope="module")
def client(cluster: Cluster) -> Iterator[ControllerClient]:
    with cluster.client() as c:
        c.jobs()  # connected before the first test's leak check takes its baseline
        yield c


@pytest.fixture
def tmp_path(cluster: Cluster) -> Path:
    """This test's own directory inside both agents' export."""
    return Path(tempfile.mkdtemp(prefix="t", dir=cluster.base / "x"))


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[Callable[[], None]]:
    """Sentinel trees outside the destination root that must never change."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"keep me")
    (tmp_path / "b" / "sibling").mkdir(parents=True, exist_ok=True)
    (tmp_path / "b" / "sibling" / "data").write_bytes(b"sibling")
    before_out, before_sib = snapshot(outside), snapshot(tmp_path / "b" / "sibling")

    def check() -> None:
        assert not diff_trees(before_out, snapshot(outside))
        assert not diff_trees(before_sib, snapshot(tmp_path / "b" / "sibling"))
        assert not list(tmp_path.rglob("pwned*"))
        assert not [p for p in tmp_path.rglob(".zc.*")], "temp files left behind"

    yield check
    check()


@pytest.mark.parametrize("name", [b"../pwned", b"a/../../pwned", b"/etc/pwned", b"//pwned", b"./pwned", b"",
                                  b"x/./pwned", b"pwned/", b"nul\0pwned", b".zc.pwned.tmp"])
def test_bad_names_are_refused(cluster: Cluster, evil: FakeAgent, client: ControllerClient, tmp_path: Path,
                               guarded: Callable[[], None], name: bytes) -> None:
    s = Session(client, evil, tmp_path / "b" / "dst")
    s.entries(ROOT, Entry(Kind.DIR, b"a", 0o755, 0), f(name, 3))
    reason = s.refused()
    s.close()
    assert reason and not any(c in reason for c in "\0\n\r")  # names are escaped, never raw
    error = job_failed(client, s.job.id)
    assert "hostB" in error
    guarded()


def test_name_through_symlink_in_the_same_manifest(cluster: Cluster, evil: FakeAgent, client: ControllerClient,
                                                   tmp_path: Path, guarded: Callable[[], None]) -> None:
    s = Session(client, evil, tmp_path / "b" / "dst")
    s.entries(ROOT, Entry(Kind.SYMLINK, b"link", 0o777, 0, target=os.fsencode(tmp_path / "outside")),
              f(b"link/pwned", 3))
    assert "parent is not a directory" in s.refused()
    s.close()
    job_failed(client, s.job.id)
    assert os.path.islink(tmp_path / "b" / "dst" / "link")  # the link itself is harmless data


def test_name_through_a_planted_symlink_on_disk(cluster: Cluster, evil: FakeAgent, client: ControllerClient,
                                                tmp_path: Path, guarded: Callable[[], None]) -> None:
    dst = tmp_path / "b" / "dst"
    dst.mkdir(parents=True)
    os.symlink(tmp_path / "outside", dst / "sub")
    # Not announced as a directory: refused outright.
    s = Session(client, evil, dst)
    s.entries(ROOT, f(b"sub/pwned", 3))
    assert "parent is not a directory" in s.refused()
    s.close()
    job_failed(client, s.job.id)
    # Announced as a directory: the planted link is replaced by a real directory, never followed.
    s = Session(client, evil, dst)
    s.entries(ROOT, Entry(Kind.DIR, b"sub", 0o755, 0), f(b"sub/pwned-but-inside", 3))
    assert s.end_manifest(3) == [2]
    s.ch.send(fr.encode_file(whole(2, 3)) + b"abc" + fr.frame(fr.T.FILE_END, bytes([fr.FileEnd.OK])))
    s.ch.send(fr.frame(fr.T.SENDER_DONE))
    kind, _ = s.ch.recv_frame()
    assert kind is fr.T.RESULT
    s.close()
    assert not os.path.islink(dst / "sub")
    assert (dst / "sub" / "pwned-but-inside").read_bytes() == b"abc"
    (dst / "sub" / "pwned-but-inside").unlink()


def test_symlink_swapped_in_mid_job(cluster: Cluster, evil: FakeAgent, client: ControllerClient, tmp_path: Path,
                                    guarded: Callable[[], None]) -> None:
    dst = tmp_path / "b" / "dst"
    s = Session(client, evil, dst)
    s.entries(ROOT, Entry(Kind.DIR, b"d", 0o755, 0), f(b"d/pwned", 5))
    assert s.end_manifest(3) == [2]
    os.rename(dst / "d", dst / "d.moved")
    os.symlink(tmp_path / "outside", dst / "d")  # the swap, after the receiver created d
    s.ch.send(fr.encode_file(whole(2, 5)) + b"12345" + fr.frame(fr.T.FILE_END, bytes([fr.FileEnd.OK])))
    s.ch.send(fr.frame(fr.T.SENDER_DONE))
    kind, payload = s.ch.recv_frame()
    s.close()
    assert kind is fr.T.RESULT
    result = fr.decode_result(payload)
    assert result.errors >= 1 and "symlink" in result.first_error  # refused, reported, not written
    assert "entries failed" in job_failed(client, s.job.id)
    assert not (dst / "d.moved" / "pwned").exists()


@pytest.mark.parametrize("announced,sent", [(100, 50), (10, 20), (10, 0)])
def test_size_lies_leave_nothing_behind(cluster: Cluster, evil: FakeAgent, client: ControllerClient,
                                        tmp_path: Path, guarded: Callable[[], None], announced: int,
                                        sent: int) -> None:
    dst = tmp_path / "b" / "dst"
    s = Session(client, evil, dst)
    s.entries(ROOT, f(b"liar", announced))
    assert s.end_manifest(2) == [1]
    s.ch.send(fr.encode_file(whole(1, announced)) + b"x" * sent)
    if sent < announced:
        s.sock.shutdown(socket.SHUT_WR)  # truncated stream
        assert "announced bytes never arrived" in s.refused()
    else:  # the surplus bytes are read as the next frame header
        assert "unknown frame type" in s.refused()
    s.close()
    job_failed(client, s.job.id)
    assert not (dst / "liar").exists()


def test_duplicate_and_unrequested_entries(cluster: Cluster, evil: FakeAgent, client: ControllerClient,
                                           tmp_path: Path, guarded: Callable[[], None]) -> None:
    s = Session(client, evil, tmp_path / "b" / "dst")
    s.entries(ROOT, f(b"same", 1), f(b"same", 1))
    assert "duplicate" in s.refused()
    s.close()
    s = Session(client, evil, tmp_path / "b" / "dst")
    s.entries(ROOT, f(b"a", 1))
    s.end_manifest(2)
    s.ch.send(fr.encode_file(whole(0, 1)) + b"x")  # index 0 was never asked for
    assert "not asked for" in s.refused()
    s.close()


def test_tickets_are_single_use_and_required(cluster: Cluster, evil: FakeAgent, client: ControllerClient,
                                             tmp_path: Path) -> None:
    s = Session(client, evil, tmp_path / "b" / "dst")
    host, port = s.sock.getpeername()[:2]

    def hello(ticket: bytes, job_id: int, attempt: int) -> tuple[Any, bytes]:
        with socket.create_connection((host, port), timeout=10) as sock:
            ch = Channel(sock)
            ch.send(fr.encode_hello(Hello(job_id, attempt, ticket)))
            return ch.recv_frame()

    # The ticket was consumed by the session above: a second connection with it is refused.
    kind, payload = hello(s.ticket, s.job.id, s.attempt)
    assert kind is fr.T.REFUSE and b"ticket" in payload
    # A made-up ticket, or garbage instead of HELLO, is refused too.
    assert hello(os.urandom(32), s.job.id, s.attempt)[0] is fr.T.REFUSE
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        kind, _ = Channel(sock).recv_frame()
        assert kind is fr.T.REFUSE
    # The original session still works end to end.
    s.entries(ROOT)
    assert s.end_manifest(1) == []
    s.ch.send(fr.frame(fr.T.SENDER_DONE))
    assert s.ch.recv_frame()[0] is fr.T.RESULT
    s.close()


def test_receiver_keeps_serving_after_attacks(cluster: Cluster, evil: FakeAgent, client: ControllerClient,
                                              tmp_path: Path) -> None:
    for name in (b"../x", b"/abs"):
        s = Session(client, evil, tmp_path / "b" / "dst")
        s.entries(ROOT, f(name, 1))
        assert "refusing path" in s.refused()
        s.close()
    src = tmp_path / "a" / "good"
    src.mkdir(parents=True)
    (src / "ok").write_bytes(b"fine")
    rc, _, err = cluster.ctl("replicate", f"hostA:{src}", f"hostB:{tmp_path}/b/good")
    assert rc == 0, err
    assert (tmp_path / "b" / "good" / "ok").read_bytes() == b"fine"


def test_data_connections_are_bound_to_their_session(cluster: Cluster, evil: FakeAgent,
                                                     client: ControllerClient, tmp_path: Path,
                                                     guarded: Callable[[], None]) -> None:
    dst = tmp_path / "b" / "dst"
    s = Session(client, evil, dst)
    assert len(s.data_tickets) == 1  # we asked for one stream
    # A data ticket can't open a control connection, and works once as a data connection.
    with socket.create_connection(s.address, timeout=10) as sock:
        ch = Channel(sock)
        ch.send(fr.encode_hello(Hello(s.job.id, s.attempt, s.data_tickets[0], fr.ConnRole.CONTROL, 1)))
        assert ch.recv_frame()[0] is fr.T.REFUSE
    d = s.data()
    assert d.recv_frame()[0] is fr.T.ACCEPT
    d2 = s.data()
    assert d2.recv_frame()[0] is fr.T.REFUSE
    s.entries(ROOT, f(b"big", 10))
    assert s.end_manifest(2) == [1]
    # Two ranges of one file that overlap: refused, and the partial temp file is gone.
    d.send(fr.encode_file(FileHead(1, 0, 6, 10, 0, 0o644)) + b"abcdef" + fr.FILE_END_OK)
    d.send(fr.encode_file(FileHead(1, 4, 6, 10, 0, 0o644)) + b"ghijkl" + fr.FILE_END_OK)
    kind, payload = d.recv_frame()
    assert kind is fr.T.ABORT and "overlaps" in fr.decode_text(payload)
    assert s.refused().startswith("closed")  # the control connection is dropped too: the whole attempt is lost
    s.close()
    job_failed(client, s.job.id)
    assert not (dst / "big").exists()


def test_ranges_from_two_connections_assemble_one_file(cluster: Cluster, evil: FakeAgent,
                                                       client: ControllerClient, tmp_path: Path) -> None:
    dst = tmp_path / "b" / "dst"
    s = Session(client, evil, dst)
    s.entries(ROOT, f(b"two-halves", 8))
    assert s.end_manifest(2) == [1]
    d = s.data()
    assert d.recv_frame()[0] is fr.T.ACCEPT
    d.send(fr.encode_file(FileHead(1, 4, 4, 8, 7, 0o600)) + b"5678" + fr.FILE_END_OK)
    assert not (dst / "two-halves").exists()  # half a file is never visible under its name
    s.ch.send(fr.encode_file(FileHead(1, 0, 4, 8, 7, 0o600)) + b"1234" + fr.FILE_END_OK)
    d.send(fr.frame(fr.T.DATA_DONE))
    s.ch.send(fr.frame(fr.T.SENDER_DONE))
    assert s.ch.recv_frame()[0] is fr.T.RESULT
    s.close()
    assert (dst / "two-halves").read_bytes() == b"12345678"
    assert (dst / "two-halves").stat().st_mtime_ns == 7
    assert oct((dst / "two-halves").stat().st_mode & 0o777) == oct(0o600)


def test_a_range_past_the_end_is_refused(cluster: Cluster, evil: FakeAgent, client: ControllerClient,
                                         tmp_path: Path, guarded: Callable[[], None]) -> None:
    s = Session(client, evil, tmp_path / "b" / "dst")
    s.entries(ROOT, f(b"f", 4))
    s.end_manifest(2)
    payload = struct.pack("!IQQQqI", 1, 2, 4, 4, 0, 0o644)  # bytes 2..6 of a 4-byte file
    s.ch.send(fr.frame(fr.T.FILE, payload) + b"xxxx" + fr.FILE_END_OK)
    assert "outside the file" in s.refused()
    s.close()
    job_failed(client, s.job.id)


def test_a_job_session_takes_no_change_list(cluster: Cluster, evil: FakeAgent, client: ControllerClient,
                                            tmp_path: Path, guarded: Callable[[], None]) -> None:
    """Deletions in a job are --delete's business: a job's source may not send a watch rule's CHANGES."""
    dst = tmp_path / "b" / "dst"
    dst.mkdir(parents=True)
    (dst / "keep").write_bytes(b"mine")
    s = Session(client, evil, dst)
    s.ch.send(opf.encode_ops(fr.T.CHANGES, [opf.Op(opf.OP_DELETE, b"keep")]) + fr.frame(fr.T.CHANGES_END))
    assert "only watch rules send changes" in s.refused()
    s.close()
    job_failed(client, s.job.id)
    assert (dst / "keep").read_bytes() == b"mine"
