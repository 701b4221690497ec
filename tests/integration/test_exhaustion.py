"""Hostile peers cannot exhaust a receiving agent (issue 9, findings 5, 6 and 7), against real agent processes:
slots held by slowloris strangers, disk filled through FILE.total or a preallocation past the free-space
margin, memory through hard links or watch-rule renames. Each is refused with a sentence that says which
setting to raise, and the agent keeps serving."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from hostilepeer import ROOT, Session, f, job_failed
from zchelpers import Cluster, FakeAgent, diff_trees, make_tree, snapshot, wait_for

from zcrepl.agent.transfer import entrycodec as ec
from zcrepl.agent.transfer import frame as fr
from zcrepl.agent.transfer import opsframe as opf
from zcrepl.agent.transfer.channel import Channel
from zcrepl.agent.transfer.frame import Entry, FileHead, Hello, Kind
from zcrepl.cli.client import ControllerClient
from zcrepl.core.types import Endpoint, JobOptions
from zcrepl.core.watchtypes import WATCH_ID_BASE

MiB = 1 << 20
# Normal agents here stay under ~100 MiB; the findings grew one by 560 (hard links) and 323 MiB (renames).
RSS_BOUND = 400 * MiB


def _rss(cluster: Cluster, name: str) -> int:
    proc = cluster.daemons[name].proc
    assert proc is not None
    return int(psutil.Process(proc.pid).memory_info().rss)


def _send_all(ch: Channel, frames: Iterator[bytes], watch: Callable[[], None]) -> int:
    """Send until the receiver hangs up; returns how many frames went."""
    sent = 0
    try:
        for frame in frames:
            ch.send(frame)
            sent += 1
            if sent % 16 == 0:
                watch()
    except OSError:
        pass
    return sent


# -- slots --------------------------------------------------------------------------------------------------


def test_a_job_succeeds_while_slowloris_strangers_hold_the_port(cluster: Cluster, tmp_path: Path) -> None:
    """Finding 5: 100 connections from 100 addresses, each trickling one byte of a HELLO every second (well
    inside the 10 s read timeout): on main they held all 64 slots and every attempt of a real job failed."""
    host, port = cluster.daemons["hostB"].ready["data"].rsplit(":", 1)
    hello = fr.encode_hello(Hello(1, 1, os.urandom(32)))
    strangers: dict[socket.socket, int] = {}  # -> bytes of the HELLO sent so far
    for i in range(100):
        s = socket.socket()
        s.bind((f"127.0.1.{i + 1}", 0))
        s.connect((host, int(port)))
        s.sendall(hello[:1])
        strangers[s] = 1

    def open_ones() -> list[socket.socket]:
        """Send each stranger's next byte; the ones still open (the HELLO takes them 27 s to finish)."""
        alive = []
        for s, sent in strangers.items():
            try:
                s.sendall(hello[sent : sent + 1])
                strangers[s] = min(sent + 1, len(hello) - 1)
                s.setblocking(False)
                if s.recv(1, socket.MSG_PEEK) == b"":
                    continue
            except BlockingIOError:
                alive.append(s)
            except OSError:
                continue
            else:
                continue  # it was told something: REFUSE
            finally:
                s.setblocking(True)
        return alive

    src = tmp_path / "a" / "src"
    make_tree(src, files=200)
    try:
        assert len(open_ones()) >= 64  # the port is as full of strangers as it gets
        proc = subprocess.Popen(
            [sys.executable, "-m", "zcrepl.cli.ctl", "--controller", cluster.controller_addr, "replicate",
             f"hostA:{src}", f"hostB:{tmp_path}/b/dst"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, **cluster.pki.env()})
        while proc.poll() is None:  # strangers keep trickling while the job runs
            open_ones()
            time.sleep(0.5)
        _, err = proc.communicate()
        assert proc.returncode == 0, err.decode(errors="replace")
    finally:
        for s in strangers:
            s.close()
    assert not diff_trees(snapshot(src), snapshot(tmp_path / "b" / "dst"))


# -- disk ---------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _used(path: Path) -> int:
    vfs = os.statvfs(path)
    return (vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize


def test_file_total_must_match_the_entry(cluster: Cluster, evil: FakeAgent, client: ControllerClient,
                                         tmp_path: Path) -> None:
    """Finding 6: the entry says 1 byte, FILE.total says 48 MiB: on main the receiver preallocated it all and
    held it while the connection stayed open."""
    with _tmpfs(tmp_path / "b" / "small", "64m") as small:
        s = Session(client, evil, small / "dst")
        s.entries(ROOT, f(b"tiny", 1))
        assert s.end_manifest(2) == [1]
        s.ch.send(fr.encode_file(FileHead(1, 0, 1, 48 * MiB, 0, 0o644)) + b"x")
        assert "announces 50331648 bytes" in s.refused()
        assert _used(small) < MiB, "the lie was preallocated"
        s.close()
        error = job_failed(client, s.job.id)
        assert "announces 50331648 bytes, its manifest entry 1" in error, error
        assert not list(small.rglob(".zc.*"))


@pytest.fixture
def margin_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    monkeypatch.setenv("ZC_FREE_MARGIN_BYTES", str(32 * MiB))  # inherited by the agents started here
    c = Cluster(tmp_path)
    try:
        c.controller.start()
        c.add_agent("hostB", tmp_path / "b").start()
        c.wait_online("hostB")
        yield c
    finally:
        c.close()


def test_preallocation_leaves_the_free_space_margin(margin_cluster: Cluster, tmp_path: Path) -> None:
    """An honest-looking manifest whose file would leave less than free_margin_bytes (32 MiB here) free on a
    64 MiB filesystem: refused before a byte is reserved; a smaller file still goes in."""
    evil = FakeAgent(margin_cluster.controller_addr, "evil", pki=margin_cluster.pki)
    try:
        margin_cluster.wait_online("evil")
        with margin_cluster.client() as client, \
                _tmpfs(tmp_path / "b" / "small", "64m") as small:
            s = Session(client, evil, small / "dst")
            s.entries(ROOT, f(b"fits", 2 * MiB), f(b"too-big", 40 * MiB))
            assert s.end_manifest(3) == [1, 2]
            s.ch.send(fr.encode_file(FileHead(1, 0, 2 * MiB, 2 * MiB, 0, 0o644)) + b"y" * (2 * MiB)
                      + fr.FILE_END_OK)
            s.ch.send(fr.encode_file(FileHead(2, 0, MiB, 40 * MiB, 0, 0o644)) + b"z" * MiB)
            assert "free_margin_bytes" in s.refused()
            s.close()
            error = job_failed(client, s.job.id)
            assert "free_margin_bytes" in error and "hostB" in error, error
            assert (small / "dst" / "fits").read_bytes() == b"y" * (2 * MiB)
            assert _used(small) < 3 * MiB
            assert not list(small.rglob(".zc.*"))
    finally:
        evil.close()


# -- memory -------------------------------------------------------------------------------------------------


def test_a_million_hard_links_are_refused_with_memory_bounded(cluster: Cluster, evil: FakeAgent,
                                                             client: ControllerClient, tmp_path: Path) -> None:
    """Finding 7: 1,003,522 HARDLINK entries in one manifest grew the receiver from 65 to 624 MiB."""
    s = Session(client, evil, tmp_path / "b" / "dst")
    peak = [_rss(cluster, "hostB")]

    def frames() -> Iterator[bytes]:
        yield ec.encode_entries([ROOT, f(b"a", 1)._replace(flags=fr.F_LINKED)])  # a file with other names
        n = 0
        while n < 1_003_522:
            batch = [Entry(Kind.HARDLINK, b"link-%07d" % i, 0o644, 0, target=b"a")
                     for i in range(n, min(n + fr.MAX_BATCH, 1_003_522))]
            n += len(batch)
            yield ec.encode_entries(batch)
        yield fr.encode_u64(fr.T.MANIFEST_END, n + 2)

    _send_all(s.ch, frames(), lambda: peak.append(_rss(cluster, "hostB")))
    assert "max_hardlinks" in s.refused()
    s.close()
    error = job_failed(client, s.job.id)
    assert "more than 250,000 hard links" in error and "max_hardlinks" in error, error
    assert max(peak) < RSS_BOUND, f"hostB grew to {max(peak) / MiB:.0f} MiB"
    rc, _, err = cluster.ctl("replicate", f"hostA:{tmp_path}/a", f"hostB:{tmp_path}/b/after")
    assert rc == 0, err  # and it keeps serving


def test_huge_rounds_of_renames_are_refused_with_memory_bounded(cluster: Cluster, evil: FakeAgent,
                                                               client: ControllerClient, tmp_path: Path) -> None:
    """Finding 7: 40,050 renames with long names in one round of a watch session added 323 MiB."""
    dst = tmp_path / "b" / "live"
    client.create_watch_rule(Endpoint("evil", b"/evil/src"), [Endpoint("hostB", os.fsencode(dst))], JobOptions())
    order = evil.next_order("watch_source")
    dest = order.dests[0]
    host, port = dest.data_address.rsplit(":", 1)

    def connect() -> Channel | None:
        ch = Channel(socket.create_connection((host, int(port)), timeout=10))
        ch.send(fr.encode_hello(Hello(WATCH_ID_BASE + order.rule_id, order.epoch, bytes(dest.ticket))))
        if ch.recv_frame()[0] is fr.T.ACCEPT:
            return ch
        ch.sock.close()
        return None

    ch = wait_for(connect, what="hostB to accept the rule's sessions")
    long = b"/".join([b"d" * 200] * 19)  # 3,819 bytes
    ops = [opf.Op(opf.OP_RENAME, long + b"%06d" % i, long + b"%06dx" % i) for i in range(40_050)]
    peak = [_rss(cluster, "hostB")]
    sent = _send_all(ch, iter(opf.op_batches(ops, fr.T.CHANGES)), lambda: peak.append(_rss(cluster, "hostB")))
    ch.sock.close()
    assert sent < 100, "hostB took every round of renames"  # 64 MiB is about 70 of these 1 MiB frames
    wait_for(lambda: "max_changes_bytes" in cluster.daemons["hostB"].log(), what="hostB to log why")
    assert max(peak) < RSS_BOUND, f"hostB grew to {max(peak) / MiB:.0f} MiB"
