"""Watch rules in the store, on both backends: round trips (non-UTF-8 paths too), epochs, counters, state, removal."""

from __future__ import annotations

from pathlib import Path

from zcrepl.controller.store import open_store
from zcrepl.controller.sync_store import SyncStore
from zcrepl.core.synctypes import SyncCounters, SyncRule, SyncState, sync_options
from zcrepl.core.types import Durability, Endpoint, JobOptions


def test_rules_round_trip_and_survive_a_reopen(store_spec: str, tmp_path: Path) -> None:
    store = open_store(store_spec, str(tmp_path))
    syncs = SyncStore(store)
    src = Endpoint("hostA", b"/data/\xff\xfe odd")
    dsts = (Endpoint("hostB", b"/copy/\xe4"), Endpoint("hostC", b"/c"))
    opts = sync_options(JobOptions(checksum=True, durability=Durability.NONE, bwlimit=5))
    rule = syncs.create(src, dsts, SyncRule(0, src, dsts, opts, SyncState.ACTIVE, 12.5, 0.02, 0.3))
    assert (rule.source, rule.destinations, rule.options) == (src, dsts, opts)
    assert opts.delete and (rule.window, rule.quiet, rule.created_at) == (0.02, 0.3, 12.5)
    assert [syncs.next_epoch(rule.id) for _ in range(3)] == [1, 2, 3]
    syncs.save_progress(rule.id, SyncCounters(sessions=4, bytes=99, reconciles=1), "hostB: disk full", 77.0)
    syncs.set_state(rule.id, SyncState.PAUSED)
    store.close()

    store = open_store(store_spec, str(tmp_path))
    again = SyncStore(store).get(rule.id)
    assert again is not None and again.state is SyncState.PAUSED
    assert again.counters == SyncCounters(sessions=4, bytes=99, reconciles=1)
    assert (again.last_error, again.last_error_at) == ("hostB: disk full", 77.0)
    assert SyncStore(store).next_epoch(rule.id) == 4  # epochs never repeat across restarts
    assert SyncStore(store).create(src, dsts, rule).id == rule.id + 1
    SyncStore(store).remove(rule.id)
    assert [r.id for r in SyncStore(store).all()] == [rule.id + 1]
    store.close()


def test_destinations_stored_in_the_former_latin1_shape_still_read(store_spec: str, tmp_path: Path) -> None:
    # Rules written before paths had one encoding in the store keep [host, latin-1 text] pairs; new ones are
    # written in the options' encoding (UTF-8 with surrogate escapes), so b"\xc3\xa9" reads back the same either way.
    store = open_store(store_spec, str(tmp_path))
    syncs = SyncStore(store)
    src, dsts = Endpoint("hostA", b"/a"), (Endpoint("hostB", b"/caf\xc3\xa9"), Endpoint("hostC", b"/raw\xff"))
    old = syncs.create(src, dsts, SyncRule(0, src, dsts, sync_options(JobOptions()), SyncState.ACTIVE, 1.0, 0.02, 0.3))
    new = syncs.create(src, dsts, old)
    former = '[["hostB", "/caf\\u00c3\\u00a9"], ["hostC", "/raw\\u00ff"]]'
    store.run(lambda: store.db.execute("UPDATE syncs SET dsts=? WHERE id=?", (former, old.id)))
    store.close()
    store = open_store(store_spec, str(tmp_path))
    assert [r.destinations for r in SyncStore(store).all()] == [dsts, dsts]
    stored = store.run(lambda: store.db.execute("SELECT dsts FROM syncs WHERE id=?", (new.id,)).fetchone()[0])
    assert '"path": "/caf\\u00e9"' in stored and '"/raw\\udcff"' in stored
    store.close()
