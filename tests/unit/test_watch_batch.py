"""The watcher's lean path from watchdog to the coalescer (issue 11, item 5): batches, move pairing in
``BatchGrouper``, and IN_MODIFY storms dropped by ``WatchFD`` without losing a write. Real inotify, real files."""

from __future__ import annotations

import contextlib
import os
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from watchdog.events import (
    EVENT_TYPE_ATTRIB,
    EVENT_TYPE_CLOSED,
    EVENT_TYPE_CREATED,
    EVENT_TYPE_DELETED,
    EVENT_TYPE_MODIFIED,
    EVENT_TYPE_MOVED,
)
from watchdog.observers.inotify_c import CallbackId, InotifyConstants, InotifyEvent, Mask, WatchDescriptor
from watchdog.observers.inotify_move_event_grouper import PathedInotifyEvent

from zcrepl.agent.watch import TreeWatcher
from zcrepl.agent.watch_coalesce import ChangeSet
from zcrepl.agent.watch_inotify import CREATED_CLOSED, BatchGrouper, Raw, WatchFD, _translate

C = InotifyConstants


def ev(mask: int, name: bytes, cookie: int = 0) -> PathedInotifyEvent:
    return PathedInotifyEvent(InotifyEvent(WatchDescriptor(1), Mask(mask), cookie, name), b"/r/" + name)


# -- the emitter's translation of inotify events into Raw tuples ----------------------------------------------

_TRANSLATED: list[tuple[int, bytes, list[Raw]]] = [
    (C.IN_CREATE, b"f", [(EVENT_TYPE_CREATED, b"/r/f", b"", False)]),
    (C.IN_CREATE | C.IN_ISDIR, b"d", [(EVENT_TYPE_CREATED, b"/r/d", b"", True)]),
    (C.IN_MODIFY, b"f", [(EVENT_TYPE_MODIFIED, b"/r/f", b"", False)]),
    (C.IN_MODIFY | C.IN_ISDIR, b"d", []),  # DirModifiedEvent is not wanted
    (C.IN_ATTRIB | C.IN_ISDIR, b"d", [(EVENT_TYPE_ATTRIB, b"/r/d", b"", True)]),
    (C.IN_DELETE, b"f", [(EVENT_TYPE_DELETED, b"/r/f", b"", False)]),
    (C.IN_MOVED_FROM, b"f", [(EVENT_TYPE_MOVED, b"/r/f", b"", False)]),  # moved out of the tree
    (C.IN_MOVED_TO | C.IN_ISDIR, b"d", [(EVENT_TYPE_MOVED, b"", b"/r/d", True)]),  # moved in
    (C.IN_CLOSE_WRITE, b"f", [(EVENT_TYPE_CLOSED, b"/r/f", b"", False)]),
    (C.IN_CLOSE_WRITE | C.IN_ISDIR, b"d", []),
    (C.IN_CREATE | C.IN_CLOSE_WRITE, b"f", [(CREATED_CLOSED, b"/r/f", b"", False)]),  # folded by WatchFD
    (C.IN_DELETE_SELF, b"d", []),  # a watched subdirectory: its parent's IN_DELETE reports it
    (C.IN_OPEN, b"f", []),
]


def test_each_inotify_mask_becomes_its_raw_event_first_seen_or_cached() -> None:
    for _ in range(2):  # the first pass fills the per-mask table, the second reads it
        for mask, name, want in _TRANSLATED:
            assert _translate([ev(mask, name)], b"/r") == (want, False), (mask, name)


def test_a_batch_keeps_its_order_pairs_moves_and_stops_when_the_root_is_deleted() -> None:
    moved = (ev(C.IN_MOVED_FROM, b"a", cookie=3), ev(C.IN_MOVED_TO, b"b", cookie=3))
    root_gone = PathedInotifyEvent(InotifyEvent(WatchDescriptor(1), Mask(C.IN_DELETE_SELF), 0, b""), b"/r")
    out, stop = _translate([ev(C.IN_CREATE, b"x"), moved, root_gone], b"/r")
    assert out == [(EVENT_TYPE_CREATED, b"/r/x", b"", False), (EVENT_TYPE_MOVED, b"/r/a", b"/r/b", False),
                   (EVENT_TYPE_DELETED, b"/r", b"", True)]
    assert stop


# -- BatchGrouper: watchdog's move-pairing contract, read in batches ---------------------------------------


def test_a_batch_is_everything_ready_in_order() -> None:
    g = BatchGrouper()
    for i in range(5):
        g.put_event(ev(C.IN_CREATE, b"f%d" % i))
    batch = g.read_batch()
    assert batch is not None and [e.path for e in batch] == [b"/r/f%d" % i for i in range(5)]  # type: ignore[union-attr]


def test_a_paired_move_is_one_item_released_as_soon_as_it_pairs() -> None:
    g = BatchGrouper()
    g.delay = 30.0  # a lone IN_MOVED_FROM would block the queue for half a minute
    g.put_event(ev(C.IN_CREATE, b"before"))
    g.put_event(ev(C.IN_MOVED_FROM, b"a", cookie=7))
    g.put_event(ev(C.IN_CREATE, b"behind"))  # queued behind the held IN_MOVED_FROM
    first = g.read_batch()
    assert first is not None and [e.path for e in first] == [b"/r/before"]  # type: ignore[union-attr]
    got: list[object] = []
    reader = threading.Thread(target=lambda: got.append(g.read_batch()))
    reader.start()
    g.put_event(ev(C.IN_MOVED_TO, b"b", cookie=7))  # wakes the reader at once, not after the 30 s hold
    reader.join(10)
    assert not reader.is_alive()
    [batch] = got
    assert isinstance(batch, list) and len(batch) == 2
    assert batch[0].path == b"/r/behind"  # order kept: the pair is queued where its IN_MOVED_TO came
    src, dst = batch[1]
    assert (src.path, dst.path) == (b"/r/a", b"/r/b")
    assert g.get_queued_moved_from_event(7) is None


def test_a_lone_moved_from_holds_what_follows_for_its_delay() -> None:
    g = BatchGrouper()
    g.delay = 0.2
    g.put_event(ev(C.IN_MOVED_FROM, b"gone", cookie=3))
    g.put_event(ev(C.IN_CREATE, b"next"))
    assert g.get_queued_moved_from_event(3) is not None
    t0 = time.monotonic()
    batch = g.read_batch()
    assert time.monotonic() - t0 >= 0.2 * 0.9  # it waited out the hold (monotonic sleep granularity)
    assert batch is not None and [e.path for e in batch] == [b"/r/gone", b"/r/next"]  # type: ignore[union-attr]


def test_close_wakes_a_waiting_reader() -> None:
    g = BatchGrouper()
    got: list[object] = ["unset"]
    reader = threading.Thread(target=lambda: got.__setitem__(0, g.read_batch()))
    reader.start()
    g.close()
    reader.join(10)
    assert not reader.is_alive() and got == [None]


# -- WatchFD: IN_MODIFY storms ---------------------------------------------------------------------------


class Collect:
    """A watchdog watch callback that records what WatchFD lets through."""

    def __init__(self) -> None:
        self.events: list[InotifyEvent] = []
        self.lock = threading.Lock()

    def on_event(self, event: InotifyEvent) -> None:
        with self.lock:
            self.events.append(event)

    def on_watch_deleted(self, wd: WatchDescriptor) -> None:
        pass

    def on_queue_overflow(self) -> None:
        pass

    def count(self, mask: int) -> int:
        with self.lock:
            return sum(1 for e in self.events if e.mask & mask)


@pytest.fixture
def fd() -> Iterator[list[WatchFD]]:
    made: list[WatchFD] = []
    yield made
    for f in made:
        f.stop()
        f.join(5)


def _watch(made: list[WatchFD], root: Path, merge: float) -> Collect:
    f = WatchFD(lambda: None, lambda _p: None, merge=merge)
    made.append(f)
    sink = Collect()
    f.add_callback(os.fsencode(root), Mask(C.IN_CREATE | C.IN_MODIFY | C.IN_CLOSE_WRITE), sink, CallbackId(1))
    f.start()
    return sink


def _storm(path: Path, writes: int) -> None:
    with open(path, "wb", buffering=0) as f:
        for _ in range(writes):
            f.write(b"x")  # one write(2), one IN_MODIFY each (the kernel merges only unread duplicates)
            time.sleep(0.001)


def test_a_storm_of_writes_costs_a_handful_of_events(fd: list[WatchFD], tmp_path: Path) -> None:
    kept, every = tmp_path / "kept", tmp_path / "every"
    kept.mkdir()
    every.mkdir()
    merged, unmerged = _watch(fd, kept, merge=10.0), _watch(fd, every, merge=0.0)
    for d in (kept, every):
        _storm(d / "log", 200)
    deadline = time.monotonic() + 10
    while (merged.count(C.IN_CLOSE_WRITE) < 1 or unmerged.count(C.IN_CLOSE_WRITE) < 1) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert merged.count(C.IN_CREATE) == 1 and merged.count(C.IN_CLOSE_WRITE) == 1
    assert merged.count(C.IN_MODIFY) == 0  # every write came within merge of the IN_CREATE
    assert unmerged.count(C.IN_MODIFY) >= 2  # the same writes, unmerged, do reach the reader


def test_a_write_after_a_close_goes_through(fd: list[WatchFD], tmp_path: Path) -> None:
    sink = _watch(fd, tmp_path, merge=10.0)
    (tmp_path / "f").write_bytes(b"one")
    with open(tmp_path / "f", "ab") as f:  # reopened: its IN_MODIFY is news after the IN_CLOSE_WRITE
        f.write(b"two")
    deadline = time.monotonic() + 10
    while sink.count(C.IN_CLOSE_WRITE) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    names: list[tuple[int, bytes]] = []
    for e in sink.events:
        mask = e.mask & (C.IN_CREATE | C.IN_MODIFY | C.IN_CLOSE_WRITE)
        if mask == C.IN_CREATE | C.IN_CLOSE_WRITE:  # one event when both came in one read
            names += [(C.IN_CREATE, e.name), (C.IN_CLOSE_WRITE, e.name)]
        else:
            names.append((mask, e.name))
    assert names == [(C.IN_CREATE, b"f"), (C.IN_CLOSE_WRITE, b"f"), (C.IN_MODIFY, b"f"), (C.IN_CLOSE_WRITE, b"f")]


def test_a_create_and_its_close_in_one_read_are_one_event(fd: list[WatchFD]) -> None:
    """Folded only when nothing but merged IN_MODIFY came for the name between them; a directory never is."""
    f = WatchFD(lambda: None, lambda _p: None, merge=10.0)
    fd.append(f)
    f.start()  # watches nothing: only so that the fixture's stop closes it
    ev = struct.Struct("iIII")
    buf = b"".join(ev.pack(1, mask, 0, 16) + name.ljust(16, b"\0") for mask, name in [
        (C.IN_CREATE, b"a"), (C.IN_MODIFY, b"a"), (C.IN_CREATE, b"b"), (C.IN_CLOSE_WRITE, b"a"),
        (C.IN_ATTRIB, b"b"), (C.IN_CLOSE_WRITE, b"b"), (C.IN_CREATE | C.IN_ISDIR, b"d"),
        (C.IN_CLOSE_WRITE | C.IN_ISDIR, b"d")])
    got = [(e.mask, e.name) for e in f._events_of(buf)]
    assert got == [(C.IN_CREATE | C.IN_CLOSE_WRITE, b"a"), (C.IN_CREATE, b"b"), (C.IN_ATTRIB, b"b"),
                   (C.IN_CLOSE_WRITE, b"b"), (C.IN_CREATE | C.IN_ISDIR, b"d"), (C.IN_CLOSE_WRITE | C.IN_ISDIR, b"d")]


# -- TreeWatcher: the whole path --------------------------------------------------------------------------


class Counting(TreeWatcher):
    """Counts the batches the emitter hands over."""

    batches = 0
    events = 0

    def _on_batch(self, events: list[Raw]) -> None:
        self.batches += 1
        self.events += len(events)
        super()._on_batch(events)


def test_a_dropped_write_is_still_read_by_the_ship_of_its_file(tmp_path: Path) -> None:
    root = tmp_path / "src"
    root.mkdir()
    seen: list[bytes] = []
    done = threading.Event()

    def ship(cs: ChangeSet) -> None:  # reads the source before returning, as the contract says
        if b"open" in cs.upserts:
            seen.append((root / "open").read_bytes())
            done.set()

    w = TreeWatcher(os.fsencode(root), on_changes=ship, window=0.02, quiet=0.4)  # merge = 0.1 s
    with w:
        time.sleep(0.1)
        with open(root / "open", "wb", buffering=0) as f:
            f.write(b"first ")
            time.sleep(0.01)
            f.write(b"second")  # within merge of the first: its IN_MODIFY is dropped
            assert done.wait(10), "the open file is shipped once quiet, without a close"
    assert seen[0] == b"first second"


def test_a_burst_reaches_the_coalescer_in_batches_and_complete(tmp_path: Path) -> None:
    root = tmp_path / "src"
    root.mkdir()
    got: set[bytes] = set()
    cond = threading.Condition()

    def ship(cs: ChangeSet) -> None:
        with cond:
            got.update(cs.upserts)
            cond.notify_all()

    w = Counting(os.fsencode(root), on_changes=ship)
    writer = ("import os,sys\nr=sys.argv[1].encode()\nos.mkdir(r+b'/d')\n"
              "for j in range(3000):\n f=open(r+b'/d/f%04d'%j,'wb'); f.write(b'x'); f.close()\n")
    with w:
        with cond:
            cond.wait_for(lambda: b"" in got or bool(got), 10)  # the start-up reconciliation
        subprocess.run([sys.executable, "-c", writer, os.fsencode(root)], check=True, timeout=120)
        want = {b"d"} | {b"d/f%04d" % j for j in range(3000)}
        with cond:
            assert cond.wait_for(lambda: want <= got, 30)
    # About one event per file: IN_CREATE and IN_CLOSE_WRITE are one when read together, which a burst's nearly
    # always are (files made before the watch on d existed are found by scanning it), the IN_MODIFY between them
    # merged away (else 9,000), handed over in batches of many.
    assert 2000 <= w.events < 4500 and w.batches < w.events / 4, (w.batches, w.events)


def _timed_sink() -> tuple[list[tuple[float, ChangeSet]], threading.Condition, Callable[[ChangeSet], None]]:
    sets: list[tuple[float, ChangeSet]] = []
    cond = threading.Condition()

    def ship(cs: ChangeSet) -> None:
        with cond:
            sets.append((time.monotonic(), cs))
            cond.notify_all()

    return sets, cond, ship


def _files_in(sets: list[tuple[float, ChangeSet]]) -> set[bytes]:
    return {p for _, cs in sets for p in cs.upserts if p.startswith(b"d/")}


def test_nothing_ships_while_a_burst_goes_on(tmp_path: Path) -> None:
    root = tmp_path / "src"
    root.mkdir()
    sets, cond, ship = _timed_sink()
    # A window of half a second: the writer would have to stall that long for the burst to count as paused.
    w = TreeWatcher(os.fsencode(root), on_changes=ship, window=0.5, burst_events=20, burst_hold=60.0)
    # Some 2.5 s of writing, five windows: without the hold, sets would ship at the end of each.
    writer = ("import os,sys,time\nr=sys.argv[1].encode()\nos.mkdir(r+b'/d')\n"
              "for j in range(2000):\n f=open(r+b'/d/f%04d'%j,'wb'); f.write(b'x'); f.close(); time.sleep(0.001)\n")
    with w:
        with cond:
            cond.wait_for(lambda: bool(sets), 10)  # the start-up reconciliation
        subprocess.run([sys.executable, "-c", writer, os.fsencode(root)], check=True, timeout=120)
        wrote = time.monotonic()
        want = {b"d/f%04d" % j for j in range(2000)}
        with cond:
            assert cond.wait_for(lambda: want <= _files_in(sets), 30)
    # Its first files may ship at once (a close after a quiet window does, before a burst can be told from a
    # lone change); the rest waits for the writer to stop.
    early = _files_in([(t, cs) for t, cs in sets if t < wrote])
    assert len(early) < 20, f"{len(early)} files of the burst shipped while the writer was still writing"


def test_a_burst_that_does_not_end_still_ships_every_burst_hold(tmp_path: Path) -> None:
    root = tmp_path / "src"
    root.mkdir()
    sets, cond, ship = _timed_sink()
    w = TreeWatcher(os.fsencode(root), on_changes=ship, window=0.1, burst_events=20, burst_hold=0.5)
    writer = ("import os,sys,time\nr=sys.argv[1].encode()\nos.mkdir(r+b'/d')\nend=time.monotonic()+2.5\nj=0\n"
              "while time.monotonic()<end:\n f=open(r+b'/d/f%06d'%j,'wb'); f.write(b'x'); f.close(); j+=1\n"
              " time.sleep(0.001)\nprint(j)\n")
    with w:
        with cond:
            cond.wait_for(lambda: bool(sets), 10)
        started = time.monotonic()
        p = subprocess.run([sys.executable, "-c", writer, os.fsencode(root)], check=True, timeout=120,
                           capture_output=True)
        wrote = time.monotonic()
        want = {b"d/f%06d" % j for j in range(int(p.stdout))}
        with cond:
            assert cond.wait_for(lambda: want <= _files_in(sets), 30)
    # More than the first few files a lone close ships at once (see the test above).
    during = _files_in([(t, cs) for t, cs in sets if started < t < wrote])
    assert len(during) >= 20, "a burst longer than burst_hold ships while it goes on"


def test_a_watch_fd_stopped_before_its_first_read_closes_its_fds() -> None:
    """watchdog leaves the inotify fd and its kill pipe to the reading thread; one stopped before it read (a rule
    removed at once) or never started must still let them go (the autouse fixture counts the pipes; the inotify
    instances would run into the per-user limit of 128)."""
    def inotify_fds() -> int:
        n = 0
        for name in os.listdir("/proc/self/fd"):
            with contextlib.suppress(FileNotFoundError):  # closed since the listing (another thread's)
                n += os.readlink(f"/proc/self/fd/{name}") == "anon_inode:inotify"
        return n

    before = inotify_fds()
    for i in range(60):
        f = WatchFD(lambda: None, lambda _p: None)
        if i % 3:
            f.start()
        f.stop()
        if i % 3:
            f.join(5)
            assert not f.is_alive()
    assert inotify_fds() == before
