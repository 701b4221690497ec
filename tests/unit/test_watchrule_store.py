"""Watch rules in the store, on both backends: round trips (non-UTF-8 paths too), epochs, counters, state, removal."""

from __future__ import annotations

from pathlib import Path

from zcrepl.controller.store import open_store
from zcrepl.controller.watchrule_store import WatchRuleStore
from zcrepl.core.types import Durability, Endpoint, JobOptions
from zcrepl.core.watchtypes import WatchCounters, WatchRule, WatchState, watch_options


def test_rules_round_trip_and_survive_a_reopen(store_spec: str, tmp_path: Path) -> None:
    store = open_store(store_spec, str(tmp_path))
    syncs = WatchRuleStore(store)
    src = Endpoint("hostA", b"/data/\xff\xfe odd")
    dsts = (Endpoint("hostB", b"/copy/\xe4"), Endpoint("hostC", b"/c"))
    opts = watch_options(JobOptions(checksum=True, durability=Durability.NONE, bwlimit=5))
    rule = syncs.create(src, dsts, WatchRule(0, src, dsts, opts, WatchState.ACTIVE, 12.5, 0.02, 0.3))
    assert (rule.source, rule.destinations, rule.options) == (src, dsts, opts)
    assert opts.delete and (rule.window, rule.quiet, rule.created_at) == (0.02, 0.3, 12.5)
    assert [syncs.next_epoch(rule.id) for _ in range(3)] == [1, 2, 3]
    syncs.save_progress(rule.id, WatchCounters(sessions=4, bytes=99, reconciles=1), "hostB: disk full", 77.0)
    syncs.set_state(rule.id, WatchState.PAUSED)
    store.close()

    store = open_store(store_spec, str(tmp_path))
    again = WatchRuleStore(store).get(rule.id)
    assert again is not None and again.state is WatchState.PAUSED
    assert again.counters == WatchCounters(sessions=4, bytes=99, reconciles=1)
    assert (again.last_error, again.last_error_at) == ("hostB: disk full", 77.0)
    assert WatchRuleStore(store).next_epoch(rule.id) == 4  # epochs never repeat across restarts
    assert WatchRuleStore(store).create(src, dsts, rule).id == rule.id + 1
    WatchRuleStore(store).remove(rule.id)
    assert [r.id for r in WatchRuleStore(store).all()] == [rule.id + 1]
    store.close()


def test_destinations_stored_in_the_former_latin1_shape_still_read(store_spec: str, tmp_path: Path) -> None:
    # Rules written before paths had one encoding in the store keep [host, latin-1 text] pairs; new ones are
    # written in the options' encoding (UTF-8 with surrogate escapes), so b"\xc3\xa9" reads back the same either way.
    store = open_store(store_spec, str(tmp_path))
    syncs = WatchRuleStore(store)
    src, dsts = Endpoint("hostA", b"/a"), (Endpoint("hostB", b"/caf\xc3\xa9"), Endpoint("hostC", b"/raw\xff"))
    draft = WatchRule(0, src, dsts, watch_options(JobOptions()), WatchState.ACTIVE, 1.0, 0.02, 0.3)
    old = syncs.create(src, dsts, draft)
    new = syncs.create(src, dsts, old)
    former = '[["hostB", "/caf\\u00c3\\u00a9"], ["hostC", "/raw\\u00ff"]]'
    store.run(lambda: store.db.execute("UPDATE syncs SET dsts=? WHERE id=?", (former, old.id)))
    store.close()
    store = open_store(store_spec, str(tmp_path))
    assert [r.destinations for r in WatchRuleStore(store).all()] == [dsts, dsts]
    stored = store.run(lambda: store.db.execute("SELECT dsts FROM syncs WHERE id=?", (new.id,)).fetchone()[0])
    assert '"path": "/caf\\u00e9"' in stored and '"/raw\\udcff"' in stored
    store.close()
