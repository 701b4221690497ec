"""Tests for zcrepl.agent.watch_coalesce: the coalescing table, the rules of issue 4 item 2, on the pure
``Coalescer`` with a hand-driven clock."""

from __future__ import annotations

import pytest
from watchhelpers import Q, W, _co, _flush, _merge

from zcrepl.agent.watch_coalesce import ChangeSet, Coalescer, is_ignored

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
