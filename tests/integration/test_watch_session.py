"""Watch sessions on the real data plane (loopback sockets, real files): a reusable rule ticket, CHANGES
rounds, renames applied as renames, deletes, restricted manifests, and missed rename sources."""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from zchelpers import diff_trees, make_tree, snapshot

from zcrepl.agent.transfer import frame as fr
from zcrepl.agent.transfer import opsframe as opf
from zcrepl.agent.transfer.cancel import Cancel
from zcrepl.agent.transfer.changes import ChangePlan
from zcrepl.agent.transfer.channel import Channel
from zcrepl.agent.transfer.frame import Hello
from zcrepl.agent.transfer.receive import ReceiveSession, ReceiveSpec
from zcrepl.agent.transfer.saferoot import SafeRoot
from zcrepl.agent.transfer.send import Sender, SendSpec
from zcrepl.agent.transfer.server import DataServer, Grant, TicketBook
from zcrepl.core.config import AgentConfig
from zcrepl.core.errors import ProtocolError, TransferError
from zcrepl.core.types import Durability, JobOptions, TransferStats

JOB = (1 << 48) + 1
OPTS = JobOptions(delete=True, durability=Durability.NONE)


class Rule:
    """One destination accepting a rule's sessions with one reusable ticket, and a way to ship to it."""

    def __init__(self, src: Path, dst: Path) -> None:
        self.src, self.dst = src, dst
        self.tickets = TicketBook()
        self.server = DataServer("127.0.0.1", 0, self.tickets, AgentConfig())
        self.server.start()
        self.export = SafeRoot(os.fsencode(dst.parent))
        self.ticket = os.urandom(32)
        self.results: list[Any] = []
        self.sessions = threading.Semaphore(0)

        def serve(ch: Channel, hello: Hello) -> None:
            spec = ReceiveSpec(JOB, 1, self.export, (os.fsencode(dst.name),), OPTS, "dst")
            try:
                self.results.append(ReceiveSession(spec, self.tickets).serve_control(ch, hello))
            except Exception as err:
                self.results.append(err)
            finally:
                self.sessions.release()

        self.tickets.register(self.ticket, Grant(JOB, 1, math.inf, serve, reusable=True))

    def ship(self, plan: ChangePlan | None) -> tuple[Sender, TransferStats]:
        spec = SendSpec(JOB, 1, self.ticket, self.server.address, OPTS, Cancel(), lambda _s: None)
        root = SafeRoot(os.fsencode(self.src))
        try:
            sender = Sender(spec, root, plan, tolerate_changed=True)
            try:
                stats = sender.run()
            except TransferError as err:
                assert self.sessions.acquire(timeout=10)
                raise TransferError(f"{err}; the destination said: {self.results[-1]!r}") from err
            assert self.sessions.acquire(timeout=10)
        finally:
            root.close()
        assert isinstance(self.results[-1], TransferStats), self.results[-1]
        return sender, stats

    def same(self) -> list[str]:
        return diff_trees(snapshot(self.src), snapshot(self.dst))

    def close(self) -> None:
        self.server.stop()
        self.export.close()


@pytest.fixture
def rule(tmp_path: Path) -> Iterator[Rule]:
    src = tmp_path / "src"
    make_tree(src, files=200)
    (tmp_path / "out").mkdir()
    r = Rule(src, tmp_path / "out" / "dst")
    r.ship(None)  # the reconciliation every rule starts with
    assert not r.same()
    yield r
    r.close()


def _rel(root: Path) -> Any:
    return lambda p: b"" if p == root else os.fsencode(p.relative_to(root))


def _dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_dir() and not p.is_symlink())


def test_the_ticket_serves_many_sessions_and_a_big_directory_rename_moves_no_bytes(rule: Rule) -> None:
    top = _dirs(rule.src)[0]
    inode = (rule.dst / top.relative_to(rule.src)).stat().st_ino
    new = top.with_name(top.name + "-renamed")
    top.rename(new)
    rel_old, rel_new = (os.fsencode(p.relative_to(rule.src)) for p in (top, new))
    sender, stats = rule.ship(ChangePlan(renames=((rel_old, rel_new),), upserts=frozenset({b""})))
    assert not rule.same()
    assert (stats.files_done, stats.bytes_done) == (0, 0)
    assert sender.renamed == 1
    assert (rule.dst / new.relative_to(rule.src)).stat().st_ino == inode  # renamed, not re-created
    assert len(rule.tickets._grants) == 1  # the session's data tickets are gone, the rule's stays


def test_every_kind_of_change(rule: Rule) -> None:
    s = rule.src
    (s / "newdir" / "deep").mkdir(parents=True)
    (s / "newdir" / "deep" / "f.txt").write_bytes(b"x" * 5000)
    (s / "emptydir").mkdir()
    (s / "link").symlink_to("newdir/deep/f.txt")
    victim = next(p for p in s.rglob("*") if p.is_file() and not p.is_symlink())
    victim.unlink()
    changed = next(p for p in s.rglob("*") if p.is_file() and not p.is_symlink())
    changed.write_bytes(b"changed content")
    os.chmod(changed, 0o600)
    os.utime(changed, ns=(1_000_000_000, 1_000_000_000))
    rel = _rel(s)
    ups = {b"", b"newdir", b"newdir/deep", b"newdir/deep/f.txt", b"emptydir", b"link", rel(changed),
           rel(changed.parent), rel(victim.parent)}
    _, stats = rule.ship(ChangePlan(deletes=frozenset({rel(victim)}), upserts=frozenset(ups)))
    assert not rule.same()
    assert stats.files_done == 2 and stats.deleted == 1


def test_an_upsert_the_source_no_longer_has_is_deleted_and_types_are_replaced(rule: Rule) -> None:
    s = rule.src
    d = _dirs(s)[0]
    f = next(p for p in s.rglob("*") if p.is_file() and not p.is_symlink() and p.parent != d)
    rel = _rel(s)
    # A non-empty directory becomes a file, a file becomes a directory, and a file vanishes.
    import shutil

    shutil.rmtree(d)
    d.write_bytes(b"now a file")
    f.unlink()
    f.mkdir()
    gone = rel(f) + b"-never-existed"
    rule.ship(ChangePlan(upserts=frozenset({rel(d), rel(f), gone, rel(d.parent), rel(f.parent)})))
    assert not rule.same()


def test_a_rename_whose_source_the_destination_lacks_sends_the_target_whole(rule: Rule) -> None:
    s = rule.src
    (s / "fresh").mkdir()
    for i in range(5):
        (s / "fresh" / f"f{i}").write_bytes(os.urandom(1000))
    # The destination never saw "ghost": the rename's source is missing there.
    sender, stats = rule.ship(ChangePlan(renames=((b"ghost", b"fresh"),), upserts=frozenset({b""})))
    assert not rule.same()
    assert sender.renamed_missed == 1 and stats.files_done == 5


@pytest.mark.parametrize("bad", [(b"../x", b"y"), (b"a", b"/etc/y"), (b"a", b"a/b"), (b".zc.x", b"y"),
                                 (b"a//b", b"c")])
def test_hostile_change_lists_are_refused(rule: Rule, bad: tuple[bytes, bytes]) -> None:
    before = snapshot(rule.dst)
    with pytest.raises(TransferError):
        rule.ship(ChangePlan(renames=(bad,)))
    assert isinstance(rule.results[-1], Exception)
    assert snapshot(rule.dst) == before


def test_ops_frames_round_trip_and_bounds() -> None:
    items = [opf.Op(opf.OP_RENAME, b"a", b"b"), opf.Op(opf.OP_DELETE, b"c/d")]
    frames = opf.op_batches(items, fr.T.CHANGES)
    assert len(frames) == 1
    assert opf.decode_ops(frames[0][5:], (opf.OP_RENAME, opf.OP_DELETE)) == items
    with pytest.raises(ProtocolError):
        opf.decode_ops(frames[0][5:], (opf.OP_MISSED,))
    with pytest.raises(ProtocolError):
        opf.decode_ops(frames[0][5:-1], (opf.OP_RENAME, opf.OP_DELETE))
    many = [opf.Op(opf.OP_DELETE, b"x%d" % i) for i in range(opf.MAX_OPS + 5)]
    assert len(opf.op_batches(many, fr.T.CHANGES)) == 2


def test_a_reconciliation_removes_temp_files_a_killed_receiver_left(rule: Rule) -> None:
    sub = _dirs(rule.dst)[0]
    for where in (rule.dst, sub):
        (where / ".zc.left-behind.0badc0de.tmp").write_bytes(b"half a file")
    (rule.dst / "extra-file").write_bytes(b"the source never had it")
    _, stats = rule.ship(None)  # a full mirror, as every rule starts, restarts and recovers
    assert not rule.same()
    assert not list(rule.dst.rglob(".zc.*")) and stats.deleted == 1
