"""A seeded model check of zcrepl.agent.watch_coalesce: random file system histories (renames, rm -r, moves in
and out, temp files, files left open, events delivered late and scans racing them) are fed to the
``Coalescer``; applying every ``ChangeSet`` with the documented contract to a model destination must end equal
to the source."""

from __future__ import annotations

import random

import pytest
from watchhelpers import Q, W

from zcrepl.agent.watch_coalesce import ChangeSet, Coalescer, is_ignored

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
