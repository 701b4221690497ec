"""Request ids: a write zc-ctl retries (after UNAVAILABLE, when the leader died mid-call) is made once.

The client puts a fresh UUID in each write it sends and repeats it on every retry of that write. The leader
stores the id with what the write made (jobs, a watch rule), in the same transaction (``Store.together``), so a
repeat, on this leader or the next one after a failover, finds it and gets the same answer instead of a second
job. A write the old leader had not committed when it lost the lease was dropped with its id (``Store.fence``),
so the retry makes it anew. Calls with the same id that arrive while the first is still being committed wait
for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from zcrepl.controller.store import Store
from zcrepl.controller.store_sql import Db
from zcrepl.core.errors import InvalidArgument

MAX_LEN = 64
JOB = "job"
WATCH_RULE = "watch_rule"
SCHEDULE = "schedule"


class RequestsSql:
    def __init__(self, db: Db) -> None:
        self.db = db

    def remember(self, request_id: str, kind: str, refs: list[int], now: float) -> None:
        self.db.executemany("INSERT INTO requests (request_id, kind, ref, created_at) VALUES (?, ?, ?, ?)",
                            [(request_id, kind, r, now) for r in refs])

    def made(self, request_id: str, kind: str) -> list[int]:
        rows = self.db.execute("SELECT ref FROM requests WHERE request_id=? AND kind=? ORDER BY ref",
                               (request_id, kind)).fetchall()
        return [int(r[0]) for r in rows]


def checked(request_id: str) -> str:
    if len(request_id) > MAX_LEN or not request_id.isprintable():
        raise InvalidArgument(f"request_id must be at most {MAX_LEN} printable characters (a UUID); the client "
                              "sent another kind of value: leave it empty or send a fresh UUID per write")
    return request_id


class Requests:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.sql = RequestsSql(store.db)
        self._pending: dict[tuple[str, str], asyncio.Event] = {}

    async def made(self, request_id: str, kind: str) -> list[int]:
        """What an earlier call with this id made (committed); [] when none did, or the id is empty. Returns with
        no call of the same id in progress, so the caller may make it at once (before its next await)."""
        if not checked(request_id):
            return []
        key = (request_id, kind)
        while True:
            pending = self._pending.get(key)
            if pending is not None:
                await pending.wait()
                continue
            refs = await self.store.call(self.sql.made, request_id, kind)
            if key not in self._pending:
                return refs

    @contextmanager
    def making(self, request_id: str, kind: str) -> Iterator[None]:
        """Around making a write and waiting for its commit: repeats of the id wait until it is done."""
        if not request_id:
            yield
            return
        key = (request_id, kind)
        self._pending[key] = done = asyncio.Event()
        try:
            yield
        finally:
            del self._pending[key]
            done.set()

    def remember(self, request_id: str, kind: str, refs: list[int], now: float) -> None:
        """Queue the id with what it made: call inside the ``Store.together`` block that made it."""
        if request_id:
            self.store.write("remember_request", self.sql.remember, request_id, kind, list(refs), now)
