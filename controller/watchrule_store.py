"""Watch rules in the controller's store (either backend; the table comes from store_migrations.py).

``WatchRulesSql`` runs on the store's thread; ``WatchRuleStore`` is what the synchronous ``WatchRuleManager``
calls: writes are
queued, and rule ids and epochs are kept here (read once at start-up) so nothing waits for the database.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from typing import Any

from zcrepl.controller.store import Store
from zcrepl.controller.store_sql import Db, options_from_json, options_json, path_text, text_path
from zcrepl.core.types import Endpoint, Priority
from zcrepl.core.watchtypes import WatchCounters, WatchRule, WatchState

EPOCH_MAX = 4294967295  # epochs travel in a u32 on the wire
_COLS = ('id, state, src_host, src_path, dsts, options, created_at, "window", quiet, counters, last_error,'
         ' last_error_at')


class WatchRulesSql:
    def __init__(self, db: Db) -> None:
        self.db = db

    def create(self, rule: WatchRule) -> None:
        self.db.execute(
            'INSERT INTO syncs (id, state, src_host, src_path, dsts, options, created_at, "window", quiet) '
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (rule.id, rule.state.value, rule.source.host, rule.source.path, _dsts_json(rule.destinations),
             options_to_json(rule.options), rule.created_at, rule.window, rule.quiet))

    def get(self, rule_id: int) -> WatchRule | None:
        row = self.db.execute(f"SELECT {_COLS} FROM syncs WHERE id=?", (rule_id,)).fetchone()
        return _rule(row) if row else None

    def all(self) -> list[WatchRule]:
        return [_rule(r) for r in self.db.execute(f"SELECT {_COLS} FROM syncs ORDER BY id").fetchall()]

    def epochs(self) -> tuple[int, dict[int, int]]:
        """The largest rule id ever stored and each rule's latest epoch."""
        top = int(self.db.execute("SELECT COALESCE(MAX(id), 0) FROM syncs").fetchone()[0])
        return top, {int(i): int(e) for i, e in self.db.execute("SELECT id, epoch FROM syncs").fetchall()}

    def set_state(self, rule_id: int, state: WatchState) -> None:
        self.db.execute("UPDATE syncs SET state=? WHERE id=?", (state.value, rule_id))

    def set_epoch(self, rule_id: int, epoch: int) -> None:
        self.db.execute("UPDATE syncs SET epoch=? WHERE id=?", (epoch, rule_id))

    def save_progress(self, rule_id: int, counters: WatchCounters, last_error: str, last_error_at: float) -> None:
        self.db.execute("UPDATE syncs SET counters=?, last_error=?, last_error_at=? WHERE id=?",
                        (json.dumps(asdict(counters)), last_error, last_error_at, rule_id))

    def remove(self, rule_id: int) -> None:
        self.db.execute("DELETE FROM syncs WHERE id=?", (rule_id,))


class WatchRuleStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.sql = WatchRulesSql(store.db)
        self._id, self._epochs = store.run(self.sql.epochs)

    def create(self, src: Endpoint, dsts: tuple[Endpoint, ...], rule: WatchRule) -> WatchRule:
        self._id += 1
        rule = replace(rule, id=self._id, source=src, destinations=dsts)
        self._epochs[rule.id] = 0
        self.store.write("watch_create", self.sql.create, rule)
        return rule

    def get(self, rule_id: int) -> WatchRule | None:
        return self.store.run(self.sql.get, rule_id)

    def all(self) -> list[WatchRule]:
        return self.store.run(self.sql.all)

    def set_state(self, rule_id: int, state: WatchState) -> None:
        self.store.write("watch_state", self.sql.set_state, rule_id, state)

    def next_epoch(self, rule_id: int) -> int:
        """A new epoch for the rule: unique over the controller's restarts (stored before any order carries it,
        since the store's writes are committed in order)."""
        epoch = self._epochs[rule_id] = self._epochs.get(rule_id, 0) % EPOCH_MAX + 1
        self.store.write("watch_epoch", self.sql.set_epoch, rule_id, epoch)
        return epoch

    def save_progress(self, rule_id: int, counters: WatchCounters, last_error: str, last_error_at: float) -> None:
        self.store.write("watch_progress", self.sql.save_progress, rule_id, counters, last_error, last_error_at)

    def remove(self, rule_id: int) -> None:
        self._epochs.pop(rule_id, None)
        self.store.write("watch_remove", self.sql.remove, rule_id)


def options_to_json(o: Any) -> str:
    # A rule has no queue priority: it is never queued.
    return options_json(replace(o, priority=Priority.NORMAL))


def _dsts_json(dsts: tuple[Endpoint, ...]) -> str:
    return json.dumps([{"host": d.host, "path": path_text(d.path)} for d in dsts])


def _dsts(text: str) -> tuple[Endpoint, ...]:
    """Destinations as ``_dsts_json`` writes them; rules stored before it have ``[host, path]`` pairs with the path
    as latin-1 text, told apart by their shape (a data change, not a schema step: nothing else moved)."""
    return tuple(Endpoint(d["host"], text_path(d["path"])) if isinstance(d, dict)
                 else Endpoint(d[0], d[1].encode("latin-1")) for d in json.loads(text))


def _rule(row: tuple) -> WatchRule:  # type: ignore[type-arg]
    (rid, state, src_host, src_path, dsts, options, created, window, quiet, counters, err, err_at) = row
    return WatchRule(
        id=rid, source=Endpoint(src_host, bytes(src_path)),
        destinations=_dsts(dsts),
        options=options_from_json(options), state=WatchState(state), created_at=created, window=window,
        quiet=quiet, counters=WatchCounters(**json.loads(counters or "{}")), last_error=err, last_error_at=err_at,
    )
