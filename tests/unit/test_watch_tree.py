"""Tests for zcrepl.agent.watch: ``TreeWatcher`` on real inotify under ``tmp_path``. Only two tests reach into
watchdog, each marked FORCED: overflow (the kernel queue really overflows while the reader is held) and ENOSPC
(the libc ``inotify_add_watch`` binding is replaced, since hitting the real per-user limit would need root to
lower a system-wide sysctl)."""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from watchdog.events import EVENT_TYPE_CREATED, EVENT_TYPE_DELETED
from watchhelpers import _merge

from zcrepl.agent.transfer.saferoot import SafeRoot
from zcrepl.agent.watch import TreeWatcher
from zcrepl.agent.watch_coalesce import ChangeSet, is_ignored
from zcrepl.agent.watch_poll import LIST_AT, missing
from zcrepl.core.paths import show

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
