"""Watch rules in the controller's SQLite database (a table of their own, created if missing: additive, so
an older database opens unchanged and an older controller ignores it)."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict

from zcrepl.core.synctypes import SyncCounters, SyncRule, SyncState
from zcrepl.core.types import Durability, Endpoint, JobOptions

_SCHEMA = """
CREATE TABLE IF NOT EXISTS syncs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    state TEXT NOT NULL,
    src_host TEXT NOT NULL, src_path BLOB NOT NULL,
    dsts TEXT NOT NULL,
    options TEXT NOT NULL,
    created_at REAL NOT NULL,
    window REAL NOT NULL, quiet REAL NOT NULL,
    epoch INTEGER NOT NULL DEFAULT 0,
    counters TEXT NOT NULL DEFAULT '{}',
    last_error TEXT NOT NULL DEFAULT '', last_error_at REAL NOT NULL DEFAULT 0
);
"""


class SyncStore:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.db.executescript(_SCHEMA)

    def create(self, src: Endpoint, dsts: tuple[Endpoint, ...], rule: SyncRule) -> SyncRule:
        cur = self.db.execute(
            "INSERT INTO syncs (state, src_host, src_path, dsts, options, created_at, window, quiet) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (rule.state.value, src.host, src.path, _dsts_json(dsts), options_to_json(rule.options),
             rule.created_at, rule.window, rule.quiet))
        assert cur.lastrowid is not None
        return self.get(cur.lastrowid)  # type: ignore[return-value]

    def get(self, rule_id: int) -> SyncRule | None:
        row = self.db.execute(f"SELECT {_COLS} FROM syncs WHERE id=?", (rule_id,)).fetchone()
        return _rule(row) if row else None

    def all(self) -> list[SyncRule]:
        return [_rule(r) for r in self.db.execute(f"SELECT {_COLS} FROM syncs ORDER BY id")]

    def set_state(self, rule_id: int, state: SyncState) -> None:
        self.db.execute("UPDATE syncs SET state=? WHERE id=?", (state.value, rule_id))

    def next_epoch(self, rule_id: int) -> int:
        """A new epoch for the rule: unique over the controller's restarts (fits the wire's u32)."""
        self.db.execute("UPDATE syncs SET epoch=(epoch % 4294967295) + 1 WHERE id=?", (rule_id,))
        return int(self.db.execute("SELECT epoch FROM syncs WHERE id=?", (rule_id,)).fetchone()[0])

    def save_progress(self, rule_id: int, counters: SyncCounters, last_error: str, last_error_at: float) -> None:
        self.db.execute("UPDATE syncs SET counters=?, last_error=?, last_error_at=? WHERE id=?",
                        (json.dumps(asdict(counters)), last_error, last_error_at, rule_id))

    def remove(self, rule_id: int) -> None:
        self.db.execute("DELETE FROM syncs WHERE id=?", (rule_id,))


def options_to_json(o: JobOptions) -> str:
    # A rule has no queue priority: it is never queued; nor backup or link-dest directories (refused for rules).
    doc = {k: v for k, v in asdict(o).items() if k not in ("priority", "backup_dir", "link_dest")}
    return json.dumps({**doc, "durability": o.durability.value})


def options_from_json(text: str) -> JobOptions:
    doc = json.loads(text)
    doc.pop("priority", None)
    doc["durability"] = Durability(doc.get("durability", Durability.JOB.value))
    doc["filters"] = tuple(doc.get("filters", ()))  # JSON gives a list
    return JobOptions(**doc)


_COLS = "id, state, src_host, src_path, dsts, options, created_at, window, quiet, counters, last_error, last_error_at"


def _dsts_json(dsts: tuple[Endpoint, ...]) -> str:
    # Paths are bytes (any name Linux allows): stored as latin-1 text, which round-trips every byte.
    return json.dumps([[d.host, d.path.decode("latin-1")] for d in dsts])


def _rule(row: tuple) -> SyncRule:  # type: ignore[type-arg]
    (rid, state, src_host, src_path, dsts, options, created, window, quiet, counters, err, err_at) = row
    return SyncRule(
        id=rid, source=Endpoint(src_host, bytes(src_path)),
        destinations=tuple(Endpoint(h, p.encode("latin-1")) for h, p in json.loads(dsts)),
        options=options_from_json(options), state=SyncState(state), created_at=created, window=window,
        quiet=quiet, counters=SyncCounters(**json.loads(counters or "{}")), last_error=err, last_error_at=err_at,
    )
