"""Which controller leads: one leader per store, with an epoch that grows with each new leader.

SQLite keeps one controller: it always leads, and each start takes the next epoch (``claim`` in the store).

On PostgreSQL several controllers share the store and one leads. The lease is a session-level advisory lock
held on a dedicated connection (not the store's pool): whoever holds it leads. Taking it and incrementing the
epoch happen in one transaction on that connection, so no two leaders ever share an epoch. The lock lives and
dies with the connection: a leader that is SIGKILLed or whose machine dies closes it (at once for a killed
process; within the server's TCP keepalive, set per session below, for a dead machine or a cut), and a
follower takes it at its next try.

Timing (ControllerConfig): a follower tries to take the lock every ``lease_poll`` s (0.5); the leader checks
its connection every ``lease_renew`` s (1) and stops leading when a check fails or takes longer than
``lease_timeout`` s (2). After a SIGKILL a follower leads within ``lease_poll`` plus one round trip, and agents
reach it within their redial delay (agent/link.py): about a second on a quiet machine. A leader cut off from
the database stops at most ``lease_renew + lease_timeout`` (3 s) after its last good check, before the server
can drop its session (keepalive: idle 2 s, then 2 probes 1 s apart, so not before 4 s): two controllers never
both believe they lead. Agents refuse orders of an older epoch anyway (agent/link.py), which covers a
deposed leader's orders already on the wire.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from zcrepl.controller.store_sql import Cursor
from zcrepl.core.logs import kv

log = logging.getLogger(__name__)
LOCK_KEY = (7420, 15)  # the advisory lock's two int4 keys (the migrations use the one-bigint space)
META_EPOCH, META_LEADER, META_STORE = "leader_epoch", "leader", "store_id"


class Execute(Protocol):
    def __call__(self, sql: str, args: Sequence[object] = ...) -> Cursor: ...


def claim(execute: Execute, address: str, now: float | None = None) -> tuple[int, str]:
    """Inside the caller's transaction: the next epoch, recorded with the leader's address; and the store's id
    (made on first use). Written in SQL both dialects share (``?`` placeholders).

    The epoch is the time of the takeover in milliseconds, or the last epoch plus one when that is larger: it
    grows with each leader either way, and a store restored from a backup (an old epoch in it) still leads under
    an epoch newer than any its agents have seen, instead of having every order refused."""
    rows = dict(execute("SELECT key, value FROM meta WHERE key IN (?, ?)", (META_EPOCH, META_STORE)).fetchall())
    epoch = max(int(rows.get(META_EPOCH, "0")) + 1, int((time.time() if now is None else now) * 1000))
    store_id = rows.get(META_STORE) or secrets.token_hex(8)
    for key, value in ((META_EPOCH, str(epoch)), (META_LEADER, address), (META_STORE, store_id)):
        execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value=excluded.value",
                (key, value))
    return epoch, store_id


class Lease(Protocol):
    """Blocking calls, made one at a time from one thread."""

    def acquire(self) -> tuple[int, str, str]:
        """(epoch, store id, '') when this controller now leads; (0, '', leader's address) when another does."""

    def check(self) -> None:
        """Returns while the lease is held; raises when it may be lost."""

    def release(self) -> None: ...


class PgLease:
    """The advisory lock on a connection of its own."""

    def __init__(self, url: str, address: str, timeout: float) -> None:
        self.url = url
        self.address = address
        self.timeout = timeout
        self._conn: Any = None

    def _connection(self) -> Any:
        import psycopg  # only for a PostgreSQL store

        if self._conn is None or self._conn.closed:
            seconds = max(1, int(self.timeout))
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=seconds,
                                   application_name="zc-controller-lease", keepalives=1, keepalives_idle=1,
                                   keepalives_interval=1, keepalives_count=2, tcp_user_timeout=seconds * 1000)
            try:
                # The server's side of the cut (ignored on a Unix socket): it drops a silent session, and with it
                # the lock, no sooner than idle + count * interval = 4 s, which is after the leader has stopped.
                for setting, value in (("tcp_keepalives_idle", 2), ("tcp_keepalives_interval", 1),
                                       ("tcp_keepalives_count", 2)):
                    conn.execute(f"SET {setting} = {value}")
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def acquire(self) -> tuple[int, str, str]:
        try:
            conn = self._connection()
            with conn.transaction():
                if not conn.execute("SELECT pg_try_advisory_lock(%s, %s)", LOCK_KEY).fetchone()[0]:
                    row = conn.execute("SELECT value FROM meta WHERE key=%s", (META_LEADER,)).fetchone()
                    return 0, "", row[0] if row else ""
                epoch, store_id = claim(lambda sql, args=(): conn.execute(sql.replace("?", "%s"), args),
                                        self.address)
            return epoch, store_id, ""
        except BaseException:
            # A session lock outlives a rolled-back transaction: only closing the connection surely drops it.
            self.release()
            raise

    def check(self) -> None:
        try:
            self._connection().execute("SELECT 1").fetchone()
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class Leadership:
    """Runs the lease on the event loop: ``on_elected(epoch, store_id)`` when this controller takes the lead,
    ``on_deposed(why)`` the moment it may have lost it. The lease's calls run on one thread of their own."""

    def __init__(self, lease: Lease, address: str, *, renew: float, timeout: float, poll: float,
                 on_elected: Callable[[int, str], Awaitable[None]],
                 on_deposed: Callable[[str], Awaitable[None]]) -> None:
        self.lease = lease
        self.address = address
        self.renew, self.timeout, self.poll = renew, timeout, poll
        self.on_elected = on_elected
        self.on_deposed = on_deposed
        self.leading = False
        self.epoch = 0
        self.leader = ""  # the leader's address as last read ("" while unknown or none)
        self.led_at = 0.0
        self.reachable = True  # the last lease call reached the database (a metric: a follower cut off from it)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="zc-lease")
        self._closed = False
        self._trouble = ""  # the last failure logged, so a database that stays down is not logged every poll

    async def _lease_call(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(self._pool, fn), self.timeout)

    async def run(self) -> None:
        while True:
            if self.leading:
                await self._renew()
            else:
                await self._try()

    async def _try(self) -> None:
        try:
            epoch, store_id, leader = await self._lease_call(self.lease.acquire)
        except Exception as err:
            self._note(f"cannot reach the database for the lease: {_words(err)}")
            self.leader, self.reachable = "", False
            await asyncio.sleep(self.poll)
            return
        self._trouble, self.reachable = "", True
        if not epoch:
            self.leader = leader
            await asyncio.sleep(self.poll)
            return
        self.leading, self.epoch, self.leader, self.led_at = True, epoch, self.address, time.time()
        log.info("leading: this controller holds the lease", extra=kv(epoch=epoch, address=self.address))
        await self.on_elected(epoch, store_id)

    async def _renew(self) -> None:
        try:
            await self._lease_call(self.lease.check)
        except Exception as err:
            why = (f"the lease check took over {self.timeout:g}s" if isinstance(err, TimeoutError)
                   else f"the lease connection failed: {_words(err)}")
            self.leading, self.leader, self.reachable = False, "", False
            self._pool.submit(self.lease.release)  # after the hung check, if it is one
            log.error("stopped leading: the lease cannot be renewed; no more scheduling or orders from this "
                      "controller until it leads again", extra=kv(epoch=self.epoch, reason=why))
            self._trouble = why
            await self.on_deposed(why)
            return
        await asyncio.sleep(self.renew)

    def _note(self, trouble: str) -> None:
        if trouble != self._trouble:
            self._trouble = trouble
            log.warning("follower: no lease", extra=kv(reason=trouble))

    def close(self) -> None:
        """Give the lease up (closing its connection) and stop the thread; blocking (again: harmless)."""
        if self._closed:
            return
        self._closed = True
        self._pool.submit(self.lease.release)
        self._pool.shutdown(wait=True)
        self.leading = False


def _words(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__
