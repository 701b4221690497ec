"""Tests for zcrepl.agent.watch (TreeWatcher on real inotify) and zcrepl.agent.watch_coalesce (the pure rules).

Three layers:

1. Coalescing table: the rules of issue 4 item 2, on the pure ``Coalescer`` with a hand-driven clock.
2. A seeded model check: random file system histories (renames, rm -r, moves in and out, temp files, files
   left open, events delivered late and scans racing them) are fed to the ``Coalescer``; applying every
   ``ChangeSet`` with the documented contract to a model destination must end equal to the source.
3. ``TreeWatcher`` on real inotify under ``tmp_path``. Only two tests reach into watchdog, each marked
   FORCED: overflow (the kernel queue really overflows while the reader is held) and ENOSPC (the libc
   ``inotify_add_watch`` binding is replaced, since hitting the real per-user limit would need root to
   lower a system-wide sysctl).
"""

from __future__ import annotations

import ctypes
import errno
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from watchdog.events import EVENT_TYPE_CREATED, EVENT_TYPE_DELETED

from zcrepl.agent.transfer.saferoot import SafeRoot
from zcrepl.agent.watch import TreeWatcher
from zcrepl.agent.watch_coalesce import ChangeSet, Coalescer, is_ignored
from zcrepl.agent.watch_poll import LIST_AT, missing
from zcrepl.core.paths import show

W, Q = 0.05, 0.2


def _co(**kw: object) -> Coalescer:
    return Coalescer(window=W, quiet=Q, **kw)  # type: ignore[arg-type]


def _merge(sets: list[ChangeSet]) -> tuple[set[bytes], set[bytes], list[tuple[bytes, bytes]], bool]:
    ups: set[bytes] = set()
    dels: set[bytes] = set()
    ren: list[tuple[bytes, bytes]] = []
    for cs in sets:
        ups |= cs.upserts
        dels |= cs.deletes
        ren.extend(cs.renames)
    return ups, dels, ren, any(cs.rescan for cs in sets)


def _flush(co: Coalescer, now: float, max_batch: int = 10000) -> list[ChangeSet]:
    return co.take(now + Q + W + 1, max_batch)


# ------------------------------------------------------------------------------------- 1. coalescing table


def _create_file(co: Coalescer, p: bytes, t: float) -> None:
    co.created(p, is_dir=False, now=t, hot=True)
    co.modified(p, now=t)
    co.closed(p, now=t)


def test_create_then_modify_is_one_upsert_released_after_the_window() -> None:
    co = _co()
    co.created(b"a", is_dir=False, now=0.0, hot=True)
    co.modified(b"a", now=0.01)
    assert co.deadline() == pytest.approx(W)
    assert co.take(0.02, 100) == []  # batch not closed yet
    [cs] = co.take(W, 100)  # the root goes; the file is still open
    co.modified(b"a", now=W + 0.005)  # still writing: the next batch is no lone change
    co.closed(b"a", now=W + 0.01)
    assert co.deadline() == pytest.approx(2 * W + 0.005)
    [cs] = co.take(2 * W + 0.01, 100)
    assert cs.upserts == {b"a"} and not cs.deletes and not cs.renames
    assert cs.oldest == 0.0 and co.pending() == 0 and co.deadline() is None


def test_a_lone_closed_file_ships_at_once_and_a_burst_still_merges() -> None:
    co = _co()
    _create_file(co, b"a", 0.0)  # created, written and closed at 0.0, nothing released before
    assert co.deadline() == 0.0
    [cs] = co.take(0.0, 100)
    assert cs.upserts == {b"a", b""}  # b"": the root's mtime moved
    for i, t in enumerate((0.001, 0.002, 0.003)):  # a burst right behind it merges for the window
        _create_file(co, b"b%d" % i, t)
    assert co.deadline() == pytest.approx(0.001 + W)
    assert co.take(0.01, 100) == []
    [cs] = co.take(0.001 + W, 100)
    assert cs.upserts == {b"b0", b"b1", b"b2", b""}
    _create_file(co, b"c", 1.0)  # quiet again: the next lone change goes at once
    assert co.deadline() == 1.0


@pytest.mark.parametrize(
    ("events", "upserts", "deletes", "renames"),
    [
        pytest.param([("create", b"a"), ("delete", b"a")], set(), set(), [], id="create+delete=nothing"),
        pytest.param([("delete", b"a"), ("create", b"a")], {b"a"}, set(), [], id="delete+create=upsert"),
        pytest.param([("delete", b"a"), ("modify", b"a")], {b"a"}, set(), [], id="modify-after-delete=upsert"),
        # b may have held something the first rename replaced: it is deleted (a no-op if it did not)
        pytest.param([("move", b"a", b"b"), ("move", b"b", b"c")], set(), {b"b"}, [(b"a", b"c")], id="A-B-C=A-C"),
        pytest.param([("create", b"b"), ("move", b"a", b"b"), ("move", b"b", b"c")], set(), set(), [(b"a", b"c")],
                     id="A-B-C=A-C,B-new"),
        pytest.param([("move", b"a", b"b"), ("move", b"b", b"a")], set(), {b"b"}, [], id="A-B-A=nothing"),
        pytest.param([("create", b"a"), ("move", b"a", b"b")], {b"b"}, set(), [], id="rename-of-new=upsert"),
        pytest.param([("move", b"a", b"b"), ("delete", b"b")], set(), {b"a", b"b"}, [], id="delete-renamed-to=orig"),
        pytest.param([("create", b"b"), ("move", b"a", b"b"), ("delete", b"b")], set(), {b"a"}, [],
                     id="delete-renamed-to=orig,B-new"),
        pytest.param([("modify", b"a"), ("move", b"a", b"b")], {b"b"}, set(), [(b"a", b"b")], id="mod+rename"),
        pytest.param([("move", b"a", b"b"), ("create", b"a")], {b"a"}, set(), [(b"a", b"b")], id="rename+reuse"),
        pytest.param([("delete", b"b"), ("move", b"a", b"b")], set(), set(), [(b"a", b"b")], id="rename-over"),
    ],
)
def test_coalescing_table(events: list[tuple[bytes, ...]], upserts: set[bytes], deletes: set[bytes],
                          renames: list[tuple[bytes, bytes]]) -> None:
    co = _co()
    for i, (kind, *paths) in enumerate(events):
        t = i * 0.001
        if kind == "create":
            _create_file(co, paths[0], t)
        elif kind == "delete":
            co.deleted(paths[0], is_dir=False, now=t)
        elif kind == "modify":
            co.modified(paths[0], now=t)
            co.closed(paths[0], now=t)
        else:
            co.moved(paths[0], paths[1], is_dir=False, now=t)
    ups, dels, ren, rescan = _merge(_flush(co, 0.0))
    assert ups - {b""} == upserts  # b"" (the root) is upserted whenever its entries changed
    assert (dels, ren, rescan) == (deletes, renames, False)


def test_directory_rename_is_one_rename_and_pending_children_follow_it() -> None:
    co = _co()
    co.modified(b"d/sub/f", now=0.0)
    co.closed(b"d/sub/f", now=0.0)
    co.deleted(b"d/gone", is_dir=False, now=0.0)
    co.moved(b"d", b"e", is_dir=True, now=0.01)
    ups, dels, ren, _ = _merge(_flush(co, 0.01))
    assert ren == [(b"d", b"e")]
    assert dels == {b"e/gone"}  # deletes are applied after the renames
    assert b"e/sub/f" in ups and not any(p.startswith(b"d/") for p in ups)


def test_new_directory_renamed_is_an_upsert_of_it_and_its_children() -> None:
    co = _co()
    co.created(b"n", is_dir=True, now=0.0)
    _create_file(co, b"n/f", 0.0)
    assert co.moved(b"n", b"m", is_dir=True, now=0.01) == [b"m"]  # caller scans m
    ups, dels, ren, _ = _merge(_flush(co, 0.01))
    assert ren == [] and dels == set() and {b"m", b"m/f"} <= ups and b"n" not in ups


def test_temp_namespace_never_appears() -> None:
    co = _co()
    for p in (b".zc.x.tmp", b"d/.zc.partial/blob", b".zc.partial"):
        assert is_ignored(p)
        _create_file(co, p, 0.0)
        co.deleted(p, is_dir=False, now=0.0)
    assert not is_ignored(b"a.zc.b") and not is_ignored(b"d/x.zc.")
    assert co.arrived(b"d/.zc.dir", is_dir=True, now=0.0) is False
    co.moved(b"d/.zc.f.1234.tmp", b"d/f", is_dir=False, now=0.0)  # the atomic rename: an arrival
    co.moved(b"d/g", b"d/.zc.g.tmp", is_dir=False, now=0.0)  # moved into the temp namespace: a delete
    ups, dels, ren, _ = _merge(_flush(co, 0.0))
    assert ups == {b"d", b"d/f"} and dels == {b"d/g"} and ren == []


def test_a_file_still_being_written_is_held_until_quiet_or_closed() -> None:
    co = _co()
    co.created(b"slow", is_dir=False, now=0.0, hot=True)
    co.modified(b"slow", now=0.1)
    assert _merge(co.take(0.25, 100))[0] == {b""}  # the root goes, the open file waits
    assert co.deadline() == pytest.approx(0.1 + Q)
    co.modified(b"slow", now=0.28)
    assert co.take(0.35, 100) == []
    [cs] = co.take(0.28 + Q, 100)  # quiet for Q: released
    assert cs.upserts == {b"slow"}
    co.modified(b"slow", now=1.0)
    co.closed(b"slow", now=1.01)  # a close ends the wait at once
    assert co.take(1.0 + W, 100)[0].upserts == {b"slow"}
    strict = _co(close_settles=False)
    _create_file(strict, b"f", 0.0)
    assert _merge(strict.take(W, 100))[0] == {b""}
    assert strict.take(Q, 100)[0].upserts == {b"f"}


def test_max_batch_splits_in_order_and_never_mixes_segments() -> None:
    co = _co()
    co.moved(b"x", b"y", is_dir=False, now=0.0)
    co.moved(b"p", b"q", is_dir=False, now=0.0)
    for i in range(5):
        co.deleted(b"del%d" % i, is_dir=False, now=0.0)
    sets = _flush(co, 0.0, max_batch=3)
    assert all(len(cs) <= 3 for cs in sets)
    ops = [("r", r) for cs in sets for r in cs.renames]
    assert ops == [("r", (b"x", b"y")), ("r", (b"p", b"q"))]
    seen_delete = False
    for cs in sets:  # within the stream: every rename comes before every delete
        if cs.deletes:
            seen_delete = True
        assert not (cs.renames and seen_delete and not cs.deletes)


def test_a_delete_that_must_precede_a_rename_seals_a_barrier() -> None:
    co = _co()  # rm -r d; mkdir d; mv x d/x   (renames run before deletes within one set)
    co.deleted(b"d/old", is_dir=False, now=0.0)
    co.deleted(b"d", is_dir=True, now=0.0)
    co.created(b"d", is_dir=True, now=0.0)
    co.moved(b"x", b"d/x", is_dir=False, now=0.0)
    sets = _flush(co, 0.0)
    assert [(cs.deletes, cs.renames) for cs in sets] == [({b"d"}, ()), (frozenset(), ((b"x", b"d/x"),))]
    assert b"d" in sets[-1].upserts


def test_rescan_drops_everything_pending_and_lag_inputs() -> None:
    co = _co()
    _create_file(co, b"a", 1.0)
    assert co.oldest() == 1.0 and co.pending() == 2
    co.request_rescan(2.0)
    _create_file(co, b"b", 2.01)  # covered by the rescan that is about to be delivered
    assert co.take(2.0 + W, 100) == [ChangeSet(rescan=True, oldest=1.0)]  # the dropped change's age
    assert co.pending() == 0 and co.oldest() is None
    small = Coalescer(window=W, quiet=Q, max_pending=10)
    for i in range(20):
        small.created(b"f%d" % i, is_dir=False, now=0.0)
    assert small.take(1.0, 100)[0].rescan


# ------------------------------------------------------------------------------------- 2. model check

Node = tuple[str, int, int]  # (kind "d"/"f"/"l", meta version, content version)
Tree = dict[bytes, Node]


def _sub(tree: Tree, p: bytes) -> list[bytes]:
    return [q for q in tree if q == p or q.startswith(p + b"/")]


def _parent(p: bytes) -> bytes:
    return p.rpartition(b"/")[0]


class _Model:
    """A source tree whose operations queue the events inotify would give; a destination applied by contract."""

    def __init__(self, rng: random.Random, max_batch: int) -> None:
        self.rng = rng
        self.max_batch = max_batch
        self.n = 0
        self.src: Tree = {b"": ("d", 0, 0)}
        self.dst: Tree = dict(self.src)
        self.queue: list[tuple] = []
        self.co = Coalescer(window=W, quiet=Q)
        self.now = 0.0
        self.open: set[bytes] = set()

    def ver(self) -> int:
        self.n += 1
        return self.n

    def touch_parent(self, p: bytes) -> None:
        par = _parent(p)
        kind, _, c = self.src[par]
        self.src[par] = (kind, self.ver(), c)

    # -- source operations (each queues its events)
    def dirs(self) -> list[bytes]:
        return sorted(p for p, n in self.src.items() if n[0] == "d")

    def name(self, parent: bytes) -> bytes:
        leaf = self.rng.choice([b"a", b"b", b"c", b"a b", b"\xff\n"])
        return parent + b"/" + leaf if parent else leaf

    def op(self) -> None:
        r = self.rng.random()
        entries = sorted(p for p in self.src if p)
        if r < 0.18:
            p = self.name(self.rng.choice(self.dirs()))
            if p in self.src:
                return
            kind = self.rng.choice("ffdl")
            self.src[p] = (kind, self.ver(), self.ver())
            self.touch_parent(p)
            self.emit("created", p, kind == "d", kind == "f")
            if kind == "f":
                self.emit("modified", p)
                if self.rng.random() < 0.8:
                    self.emit("closed", p)
                else:
                    self.open.add(p)
        elif r < 0.30 and entries:
            p = self.rng.choice(entries)
            kind = self.src[p][0]
            if kind == "f":
                self.src[p] = ("f", self.src[p][1], self.ver())
                self.emit("modified", p)
                self.emit("closed", p)
            elif self.rng.random() < 0.5:
                self.src[p] = (kind, self.ver(), self.src[p][2])
                self.emit("attrib", p, kind == "d")
        elif r < 0.36 and self.open:
            p = self.open.pop()
            if self.src.get(p, ("",))[0] == "f":
                self.emit("closed", p)
        elif r < 0.50 and entries:
            p = self.rng.choice(entries)
            out = self.rng.random() < 0.2  # moved out of the tree: one event for the whole subtree
            for q in sorted(_sub(self.src, p), key=len, reverse=True):
                if not out or q == p:
                    self.emit("deleted", q, self.src[q][0] == "d")
                del self.src[q]
            self.touch_parent(p)
        elif r < 0.75 and entries:
            self.rename(self.rng.choice(entries))
        elif r < 0.85:
            p = self.name(self.rng.choice(self.dirs()))
            if p in self.src and (self.src[p][0] == "d" or self.rng.random() < 0.5):
                return
            arrivals: Tree = {p: (self.rng.choice("fd"), self.ver(), self.ver())}
            if arrivals[p][0] == "d" and self.rng.random() < 0.7:
                arrivals[p + b"/a"] = ("f", self.ver(), self.ver())
            if p in self.src:
                del self.src[p]
            self.src.update(arrivals)
            self.touch_parent(p)
            self.emit("arrived", p, arrivals[p][0] == "d")  # from outside, or our temp rename
        elif r < 0.90:
            self.emit("rescan")  # an overflow
        else:
            self.tick()

    def rename(self, s: bytes) -> None:
        kind = self.src[s][0]
        targets = [d for d in self.dirs() if d != s and not d.startswith(s + b"/")]
        t = self.name(self.rng.choice(targets))
        if t == s or t.startswith(s + b"/") or s.startswith(t + b"/"):
            return
        if t in self.src:
            tkind = self.src[t][0]
            if (kind == "d") != (tkind == "d") or (tkind == "d" and len(_sub(self.src, t)) > 1):
                return
            del self.src[t]
        for q in _sub(self.src, s):
            self.src[t + q[len(s):]] = self.src.pop(q)
        self.touch_parent(s)
        self.touch_parent(t)
        self.emit("moved", s, t, kind == "d")

    # -- the watcher side: events are stamped when they happen and may be processed later, while the
    # tree goes on changing (scans see the tree as it is when they run)
    def emit(self, *ev: object) -> None:
        self.queue.append((self.now, *ev))

    def pump(self, k: int) -> None:
        for _ in range(min(k, len(self.queue))):
            t, *ev = self.queue.pop(0)
            co = self.co
            scans: list[bytes] = []
            if ev[0] == "created":
                co.created(ev[1], is_dir=ev[2], now=t, hot=ev[3])
                scans = [ev[1]] if ev[2] else []
            elif ev[0] == "modified":
                co.modified(ev[1], now=t)
            elif ev[0] == "closed":
                co.closed(ev[1], now=t)
            elif ev[0] == "attrib":
                co.attrib(ev[1], is_dir=ev[2], now=t)
            elif ev[0] == "deleted":
                co.deleted(ev[1], is_dir=ev[2], now=t)
            elif ev[0] == "moved":
                scans = co.moved(ev[1], ev[2], is_dir=ev[3], now=t)
            elif ev[0] == "arrived":
                scans = [ev[1]] if co.arrived(ev[1], is_dir=ev[2], now=t) else []
            else:
                co.request_rescan(t)
            for top in scans:  # scans see the tree as it is now
                if self.src.get(top, ("",))[0] == "d":
                    found = [(q, self.src[q][0] == "d", self.src[q][0] == "f") for q in sorted(_sub(self.src, top))]
                    co.listed(top, [f for f in found if f[0] != top], now=t)

    def tick(self) -> None:
        self.pump(self.rng.randrange(0, 6))
        self.now += self.rng.choice([0.0, 0.01, W, 0.1, Q])
        deadline = self.co.deadline()
        if deadline is not None and self.now >= deadline:
            for cs in self.co.take(self.now, self.max_batch):
                assert 0 < len(cs) <= self.max_batch
                self.apply(cs)
            self.ship_done()

    # -- the destination, applied exactly as the ChangeSet docstring says
    def copy_from_source(self, p: bytes) -> None:
        for q in _sub(self.dst, p):
            del self.dst[q]
        if p not in self.src:
            return
        self.mkdir_p(p)
        for q in _sub(self.src, p):
            self.dst[q] = self.src[q]

    def mkdir_p(self, p: bytes) -> None:
        par = _parent(p)
        chain = []
        while par and par not in self.dst:
            chain.append(par)
            par = _parent(par)
        if self.dst.get(par, ("d",))[0] != "d":  # a read ahead of the events put a non-directory there
            del self.dst[par]
            chain.append(par)
        for d in reversed(chain):
            self.dst[d] = ("d", -1, 0)  # metadata follows with the directory's own upsert

    def apply(self, cs: ChangeSet) -> None:
        if cs.rescan:
            assert not (cs.upserts or cs.deletes or cs.renames)
            self.dst = dict(self.src)
            self.co.reconciled(self.now)
            return
        for s, t in cs.renames:
            assert not is_ignored(s) and not is_ignored(t)
            if s not in self.dst:  # make t match the source now, absent included
                self.copy_from_source(t)
                continue
            moving = {q: self.dst.pop(q) for q in _sub(self.dst, s)}
            for q in _sub(self.dst, t):
                del self.dst[q]
            self.mkdir_p(t)
            for q, node in moving.items():
                self.dst[t + q[len(s):]] = node
        for p in cs.deletes:
            for q in _sub(self.dst, p):
                del self.dst[q]
        for p in sorted(cs.upserts, key=len):
            if p not in self.src:  # gone from the source by ship time: gone from the destination too
                for q in _sub(self.dst, p):
                    del self.dst[q]
                continue
            node = self.src[p]
            old = self.dst.get(p)
            if old is not None and (old[0] == "d") != (node[0] == "d"):
                for q in _sub(self.dst, p):
                    del self.dst[q]
            if p:
                self.mkdir_p(p)
            self.dst[p] = node

    def settle(self) -> None:
        self.pump(len(self.queue))
        self.open.clear()
        self.now += Q + W + 1
        for cs in self.co.take(self.now, self.max_batch):
            self.apply(cs)
        self.ship_done()

    def ship_done(self) -> None:
        self.co.shipped(self.now, {p for p in self.co.unconfirmed() if p not in self.src})


@pytest.mark.parametrize("seed", range(6))
def test_model_applying_every_set_by_contract_reproduces_the_source(seed: int) -> None:
    for case in range(100):
        rng = random.Random(seed * 1000 + case)
        m = _Model(rng, max_batch=rng.choice([1, 2, 3, 10000]))
        for _ in range(rng.randrange(5, 60)):
            m.op()
        m.settle()
        assert m.co.pending() == 0
        assert m.dst == m.src, f"seed {seed * 1000 + case}"


# ------------------------------------------------------------------------------------- 3. real inotify


class Sink:
    """Collects delivered sets; ``wait`` polls a predicate over everything delivered since the last ``clear``."""

    def __init__(self) -> None:
        self.sets: list[ChangeSet] = []
        self.times: list[float] = []
        self.warnings: list[str] = []
        self.cond = threading.Condition()

    def __call__(self, cs: ChangeSet) -> None:
        with self.cond:
            self.sets.append(cs)
            self.times.append(time.monotonic())
            self.cond.notify_all()

    def warn(self, msg: str) -> None:
        with self.cond:
            self.warnings.append(msg)
            self.cond.notify_all()

    def clear(self) -> None:
        with self.cond:
            self.sets.clear()
            self.times.clear()

    def merged(self) -> tuple[set[bytes], set[bytes], list[tuple[bytes, bytes]], bool]:
        with self.cond:
            return _merge(list(self.sets))

    def wait(self, pred: Callable[[Sink], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred(self):
                left = deadline - time.monotonic()
                assert left > 0, f"timed out; got {self.sets} warnings {self.warnings}"
                self.cond.wait(left)

    def wait_for(self, *, upserts: set[bytes] = frozenset(), deletes: set[bytes] = frozenset(),  # type: ignore[assignment]
                 renames: list[tuple[bytes, bytes]] = (), timeout: float = 5.0) -> None:  # type: ignore[assignment]
        def done(s: Sink) -> bool:
            ups, dels, ren, _ = _merge(s.sets)
            return upserts <= ups and deletes <= dels and all(r in ren for r in renames)
        self.wait(done, timeout)

    def settle(self, quiet: float = 0.3) -> None:
        """Wait until nothing was delivered for ``quiet`` seconds."""
        while True:
            with self.cond:
                n = len(self.sets)
            time.sleep(quiet)
            with self.cond:
                if len(self.sets) == n:
                    return


@pytest.fixture
def watch(tmp_path: Path) -> Iterator[Callable[..., tuple[TreeWatcher, Sink, bytes]]]:
    started: list[TreeWatcher] = []

    def make(**kw: object) -> tuple[TreeWatcher, Sink, bytes]:
        sink = Sink()
        root = os.fsencode(tmp_path / "src")
        os.makedirs(root, exist_ok=True)
        kw.setdefault("window", 0.03)
        kw.setdefault("quiet", 0.15)
        kw.setdefault("replay_margin", 0.1)  # events reach the watcher within milliseconds here
        w = TreeWatcher(root, on_changes=sink, on_warning=sink.warn, **kw)  # type: ignore[arg-type]
        w.start()
        started.append(w)
        sink.wait(lambda s: bool(s.sets))
        assert sink.sets[0].rescan, "the first set is the reconciliation at rule start"
        time.sleep(0.15)  # past the replay period that follows a reconciliation
        sink.clear()
        return w, sink, root

    yield make
    for w in started:
        t0 = time.monotonic()
        w.stop()
        assert time.monotonic() - t0 < 1.5, "stop() must join promptly"


def _write(path: bytes, data: bytes = b"x") -> None:
    with open(path, "wb") as f:
        f.write(data)


def test_every_kind_of_change_appears(watch: Callable[..., tuple[TreeWatcher, Sink, bytes]]) -> None:
    _, sink, root = watch()
    j = lambda rel: root + b"/" + rel  # noqa: E731
    _write(j(b"f"), b"hello")
    sink.wait_for(upserts={b"f", b""})
    sink.clear()
    with open(j(b"f"), "ab") as f:
        f.write(b" world")
    sink.wait_for(upserts={b"f"})
    sink.clear()
    os.chmod(j(b"f"), 0o600)
    sink.wait_for(upserts={b"f"})
    sink.clear()
    os.utime(j(b"f"), ns=(1_000_000_000, 1_000_000_000))
    sink.wait_for(upserts={b"f"})
    sink.clear()
    os.symlink(b"../nowhere", j(b"link"))
    os.mkdir(j(b"empty"))
    sink.wait_for(upserts={b"link", b"empty"})
    sink.clear()
    os.rename(j(b"f"), j(b"g"))
    sink.wait_for(renames=[(b"f", b"g")])
    sink.clear()
    os.makedirs(j(b"big/a/b"))
    for i in range(50):
        _write(j(b"big/a/b/%d" % i))
    sink.wait_for(upserts={b"big/a/b/49"})
    sink.settle(0.2)
    sink.clear()
    os.rename(j(b"big"), j(b"large"))
    sink.wait_for(renames=[(b"big", b"large")])
    sink.settle(0.2)
    ups, dels, ren, rescan = sink.merged()
    assert ren == [(b"big", b"large")] and not dels and not rescan, "a directory rename is ONE rename"
    assert ups <= {b"", b"large"}, ups
    sink.clear()
    os.unlink(j(b"g"))
    os.rmdir(j(b"empty"))
    sink.wait_for(deletes={b"g", b"empty"})


def test_coalescing_on_disk(watch: Callable[..., tuple[TreeWatcher, Sink, bytes]]) -> None:
    _, sink, root = watch(window=0.2)
    _write(root + b"/tmp")
    os.unlink(root + b"/tmp")
    _write(root + b"/A")
    sink.wait_for(upserts={b"A"})
    sink.settle(0.1)
    sink.clear()
    os.rename(root + b"/A", root + b"/B")
    os.rename(root + b"/B", root + b"/C")
    sink.wait_for(renames=[(b"A", b"C")])
    sink.settle(0.1)
    ups, dels, ren, _ = sink.merged()
    assert ren == [(b"A", b"C")] and b"B" not in ups
    assert dels <= {b"B"}  # whatever A -> B may have replaced at B (nothing here: a no-op at the destination)


def test_new_directory_content_is_found_even_before_its_watch(
        watch: Callable[..., tuple[TreeWatcher, Sink, bytes]]) -> None:
    _, sink, root = watch()
    os.makedirs(root + b"/n/d/e")  # at once: inotify cannot have watched n/d before e appeared
    _write(root + b"/n/d/e/f")
    sink.wait_for(upserts={b"n", b"n/d", b"n/d/e", b"n/d/e/f"})


def test_a_slow_writer_is_delivered_once_after_it_goes_quiet(
        watch: Callable[..., tuple[TreeWatcher, Sink, bytes]]) -> None:
    _, sink, root = watch(quiet=0.25, close_settles=False)
    with open(root + b"/slow", "wb") as f:
        for _ in range(5):
            f.write(b"chunk")
            f.flush()
            time.sleep(0.1)
        done = time.monotonic()
    sink.wait_for(upserts={b"slow"})
    sink.settle(0.3)
    hits = [(t, cs) for t, cs in zip(sink.times, sink.sets, strict=True) if b"slow" in cs.upserts]
    assert len(hits) == 1, sink.sets
    assert hits[0][0] >= done + 0.2, "released only after it was quiet"
    assert os.path.getsize(root + b"/slow") == 25


def test_close_ends_the_wait_for_a_slow_writer(watch: Callable[..., tuple[TreeWatcher, Sink, bytes]]) -> None:
    _, sink, root = watch(quiet=1.0)
    with open(root + b"/slow", "wb") as f:
        for _ in range(3):
            f.write(b"chunk")
            f.flush()
            time.sleep(0.1)
        closing = time.monotonic()
    sink.wait_for(upserts={b"slow"})
    hits = [t for t, cs in zip(sink.times, sink.sets, strict=True) if b"slow" in cs.upserts]
    assert len(hits) == 1 and closing <= hits[0] < closing + 0.5


def test_lag_grows_while_held_and_drops_after_delivery(watch: Callable[..., tuple[TreeWatcher, Sink, bytes]]) -> None:
    w, sink, root = watch(quiet=0.6)
    assert w.lag() == 0.0 and w.pending() == 0
    f = open(root + b"/held", "wb")  # noqa: SIM115 - kept open on purpose: a file still being written
    try:
        f.write(b"x")
        f.flush()
        time.sleep(0.2)
        first = w.lag()
        time.sleep(0.2)
        assert w.lag() > first >= 0.15 and w.pending() >= 1
    finally:
        f.close()
    sink.wait_for(upserts={b"held"})
    assert w.lag() == 0.0 and w.pending() == 0


def test_burst_of_10000_files_in_100_dirs_arrives_complete(
        watch: Callable[..., tuple[TreeWatcher, Sink, bytes]]) -> None:
    _, sink, root = watch()
    writer = (  # a separate process, like any other program writing the tree
        "import os,sys\nr=sys.argv[1].encode()\n"
        "for i in range(100):\n d=r+b'/d%03d'%i\n os.mkdir(d)\n"
        " for j in range(100):\n  f=open(d+b'/f%03d'%j,'wb'); f.write(b'x'); f.close()\n"
    )
    subprocess.run([sys.executable, "-c", writer, root], check=True, timeout=60)
    on_disk = {os.fsencode(os.path.relpath(os.path.join(d, n), os.fsdecode(root)))
               for d, dirs, files in os.walk(os.fsdecode(root)) for n in dirs + files}
    assert len(on_disk) == 10100
    sink.wait(lambda s: on_disk <= s.merged()[0], timeout=15)
    sink.settle(0.2)
    ups, dels, ren, rescan = sink.merged()
    assert not rescan, "no overflow in normal conditions"
    assert ups == on_disk | {b""} and not dels and not ren
    assert all(len(cs) <= 10000 for cs in sink.sets)


def test_temp_files_never_appear(watch: Callable[..., tuple[TreeWatcher, Sink, bytes]]) -> None:
    _, sink, root = watch()
    os.makedirs(root + b"/.zc.partial/job1")
    _write(root + b"/.zc.partial/job1/blob")
    _write(root + b"/.zc.f.0badcafe.tmp", b"data")
    os.rename(root + b"/.zc.f.0badcafe.tmp", root + b"/f")  # the receiver's atomic rename
    _write(root + b"/.zc.g.tmp")
    os.unlink(root + b"/.zc.g.tmp")
    sink.wait_for(upserts={b"f"})
    sink.settle(0.2)
    ups, dels, ren, _ = sink.merged()
    assert not any(is_ignored(p) for p in ups | dels | {x for r in ren for x in r})
    assert ups == {b"", b"f"}


def test_its_own_checks_stay_below_the_root(watch: Callable[..., tuple[TreeWatcher, Sink, bytes]],
                                            tmp_path: Path) -> None:
    """Whether a path still exists, and whether a new file may still be written, is asked through the SafeRoot:
    a symlink swapped in for a directory does not make a file outside the root look present."""
    w, sink, root = watch()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f").write_bytes(b"x")
    os.symlink(outside, root + b"/link")
    _write(root + b"/real")
    sink.wait_for(upserts={b"link", b"real"})
    assert os.path.exists(root + b"/link/f")  # what a plain path lookup would have believed
    assert not w._exists(b"link/f") and not w._is_regular(b"link/f")
    assert w._exists(b"real") and w._is_regular(b"real") and w._exists(b"link") and not w._is_regular(b"link")


def test_names_that_are_not_utf8_survive(watch: Callable[..., tuple[TreeWatcher, Sink, bytes]]) -> None:
    _, sink, root = watch()
    odd = [b"\xff\xfe", b"new\nline", b"sp ace", "café".encode(), b"tab\t\x1b[31m"]
    for name in odd:
        _write(root + b"/" + name)
    os.mkdir(root + b"/\x80dir")
    os.rename(root + b"/\xff\xfe", root + b"/\x80dir/\xfe\xff")
    sink.wait_for(upserts={*odd[1:], b"\x80dir/\xfe\xff"})
    assert all(isinstance(p, bytes) for p in sink.merged()[0])


def test_FORCED_queue_overflow_yields_rescan(watch: Callable[..., tuple[TreeWatcher, Sink, bytes]]) -> None:
    # FORCED: the kernel queue really overflows (IN_Q_OVERFLOW is read from the inotify fd), but to get
    # there this test holds watchdog's InotifyFD lock so its reader thread cannot drain the queue meanwhile.
    w, sink, root = watch()
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    # IN_CREATE + IN_CLOSE_WRITE per file: twice the queue's room, as the reader may have one buffer of
    # events in hand (read outside the lock) when the lock is taken.
    n = limit + 200
    fd_thread = w._observer._fd  # type: ignore[union-attr]
    with fd_thread._lock:
        for i in range(n):
            os.close(os.open(root + b"/f%06d" % i, os.O_CREAT | os.O_WRONLY, 0o644))
    sink.wait(lambda s: any(cs.rescan for cs in s.sets), timeout=10)
    sink.clear()
    _write(root + b"/after")  # watching goes on after the recovery
    sink.wait_for(upserts={b"after"})


def test_FORCED_watch_limit_warns_and_polls(watch: Callable[..., tuple[TreeWatcher, Sink, bytes]],
                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # FORCED: the libc binding inotify_add_watch fails with ENOSPC for one subtree, as the kernel does
    # when fs.inotify.max_user_watches is exhausted (lowering the real sysctl is system-wide and needs root).
    import watchdog.observers.inotify_c as inotify_c

    os.makedirs(tmp_path / "src" / "many" / "deeper")
    os.makedirs(tmp_path / "src" / "fine")
    real = inotify_c.inotify_add_watch

    def add_watch(fd: int, path: bytes, mask: int) -> int:
        if b"/src/many" in path:
            ctypes.set_errno(errno.ENOSPC)
            return -1
        return real(fd, path, mask)

    monkeypatch.setattr(inotify_c, "inotify_add_watch", add_watch)
    _, sink, root = watch(poll_interval=0.2)
    sink.wait(lambda s: bool(s.warnings))
    [msg] = sink.warnings
    assert "fs.inotify.max_user_watches" in msg and "sysctl -w" in msg and "2 directories" in msg
    # The warning comes after the poller's baseline; the rescan it asks for may merge with the start-up one.
    sink.settle(0.1)
    sink.clear()
    _write(root + b"/many/deeper/new")
    os.mkdir(root + b"/many/later")  # inside the unwatched part: polled from now on too
    _write(root + b"/fine/watched")
    sink.wait_for(upserts={b"many/deeper/new", b"many/later", b"fine/watched"})
    sink.clear()
    _write(root + b"/many/later/x")
    os.unlink(root + b"/many/deeper/new")
    sink.wait_for(upserts={b"many/later/x"}, deletes={b"many/deeper/new"})


def test_stop_joins_threads_and_closes_everything(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    w = TreeWatcher(os.fsencode(tmp_path), on_changes=lambda cs: None)
    with w:
        _write(os.fsencode(tmp_path) + b"/x")
        time.sleep(0.05)
    assert not [t for t in threading.enumerate() if t not in before and t.is_alive()]
    with pytest.raises(RuntimeError):
        w.start()



def test_an_event_that_the_watched_root_was_deleted_warns_and_asks_for_a_reconciliation(tmp_path: Path) -> None:
    # The emitter reports IN_DELETE_SELF of the root only once the kernel frees it (our own descriptors on the
    # root delay that), so the batch is handed to the watcher's dispatch directly, as the emitter would.
    sink = Sink()
    w = TreeWatcher(os.fsencode(tmp_path), on_changes=sink, on_warning=sink.warn)
    w._apply(1.0, [(EVENT_TYPE_CREATED, w.root + b"/f", b"", False), (EVENT_TYPE_DELETED, w.root, b"", True)])
    assert sink.warnings == [f"the watched root {show(w.root)} was removed; nothing is watched any more: "
                             "recreate it and restart the sync"]
    assert w._co.take(2.0, 100) == [ChangeSet(rescan=True, oldest=1.0)]  # the create is dropped into it


def test_missing_lists_a_crowded_directory_once_and_never_follows_a_symlink(tmp_path: Path) -> None:
    """After a burst ships, the watcher asks which fresh paths are gone: a directory holding many of them is
    listed once (names compared as bytes, whatever their encoding) instead of an lstat each; one reached
    through a symlink counts as gone either way, as an lstat through SafeRoot says."""
    (tmp_path / "d").mkdir()
    names = [b"f%02d" % i for i in range(LIST_AT + 4)] + [b"caf\xe9"]
    for n in names:
        (tmp_path / "d" / os.fsdecode(n)).write_bytes(b"x")
    (tmp_path / "out").mkdir()
    for i in range(LIST_AT):
        (tmp_path / "out" / f"g{i}").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "out")
    asked = [b"d/" + n for n in names] + [b"d/nope", b"gone/x"] + [b"link/g%d" % i for i in range(LIST_AT)]
    with SafeRoot(os.fsencode(tmp_path)) as root:
        assert missing(root, asked) == {b"d/nope", b"gone/x"} | {b"link/g%d" % i for i in range(LIST_AT)}
        assert missing(root, [b"d/f00", b"d/nope"]) == {b"d/nope"}  # few: an lstat each
