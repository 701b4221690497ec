"""Leadership (controller/leadership.py) on a real PostgreSQL and SQLite, and the agent's epoch check.

One lease holder at a time; each new leader's epoch is one more than the last; a leader whose lease connection
dies stops leading at once; SQLite's single controller takes a new epoch at each start; an agent refuses
messages of an older epoch than it has seen from the same store (a deposed leader's), and nothing else.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import psycopg
import pytest

from zcrepl.agent.link import ControllerLink, _Stale
from zcrepl.controller.leadership import Leadership, PgLease, claim
from zcrepl.controller.store import open_store
from zcrepl.core.types import CancelOrder
from zcrepl.proto import controller_pb2 as cpb
from zcrepl.proto.orders import order_to_pb


class Seat:
    """One controller's Leadership with what it was told."""

    def __init__(self, url: str, name: str) -> None:
        self.events: list[tuple[str, Any]] = []
        self.lead = Leadership(PgLease(url, name, 2.0), name, renew=0.1, timeout=2.0, poll=0.05,
                               on_elected=self._elected, on_deposed=self._deposed)
        self.task: asyncio.Task[None] | None = None

    async def _elected(self, epoch: int, store_id: str) -> None:
        self.events.append(("elected", epoch))

    async def _deposed(self, why: str) -> None:
        self.events.append(("deposed", why))

    def start(self) -> Seat:
        self.task = asyncio.create_task(self.lead.run())
        return self

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None
        await asyncio.to_thread(self.lead.close)


async def _until(pred: Any, what: str, timeout: float = 20.0) -> None:
    async def loop() -> None:
        while not pred():
            await asyncio.sleep(0.02)
    try:
        await asyncio.wait_for(loop(), timeout)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def test_one_leader_then_the_next_with_a_higher_epoch(pg_url: str, tmp_path: Path) -> None:
    open_store(pg_url, str(tmp_path)).close()  # the schema (meta) as a controller's start leaves it

    async def scenario() -> None:
        a, b = Seat(pg_url, "a:1").start(), Seat(pg_url, "b:1").start()
        try:
            await _until(lambda: a.lead.leading or b.lead.leading, "a leader")
            first, second = (a, b) if a.lead.leading else (b, a)
            await _until(lambda: second.lead.leader == first.lead.address, "the follower to know the leader")
            assert [k for k, _ in first.events] == ["elected"] and not second.lead.leading and second.events == []
            await first.close()  # its connection closes: the lock goes with it
            await _until(lambda: second.lead.leading, "the follower to take over")
            assert [k for k, _ in second.events] == ["elected"] and second.events[0][1] > first.events[0][1]
            # The leader's lease connection is killed under it: it stops leading at once, then leads again.
            with psycopg.connect(pg_url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE application_name = 'zc-controller-lease'")
            await _until(lambda: len(second.events) >= 3, "the leader to step down and lead again")
            assert second.events[1][0] == "deposed" and "lease connection failed" in second.events[1][1]
            assert second.events[2][0] == "elected" and second.events[2][1] > second.events[0][1]
        finally:
            await a.close()
            await b.close()

    asyncio.run(scenario())


def test_sqlite_takes_a_new_epoch_at_each_start(tmp_path: Path) -> None:
    seen = []
    for now in (5.0, 5.0, 4.0, 9.0):  # the clock may stand still or step back: the epoch still grows
        store = open_store("", str(tmp_path))
        try:
            seen.append(store.run(claim, store.db.execute, "", now))
        finally:
            store.close()
    assert [e for e, _ in seen] == [5000, 5001, 5002, 9000]
    assert len({s for _, s in seen}) == 1 and seen[0][1]


def test_a_store_restored_from_a_backup_leads_under_a_newer_epoch(tmp_path: Path) -> None:
    store = open_store("", str(tmp_path))
    try:
        old, _ = store.run(claim, store.db.execute, "", 100.0)
        store.run(lambda: store.db.execute("UPDATE meta SET value='7' WHERE key='leader_epoch'"))  # the backup's
        new, _ = store.run(claim, store.db.execute, "", 200.0)
    finally:
        store.close()
    assert new > old > 7


class _Transfers:
    def __init__(self) -> None:
        self.cancelled: list[int] = []

    def cancel(self, order: CancelOrder) -> None:
        self.cancelled.append(order.job_id)


def _msg(job_id: int, epoch: int, store_id: str) -> cpb.ControllerMessage:
    m = order_to_pb(CancelOrder(job_id, 1, "test"))
    m.leader_epoch, m.store_id = epoch, store_id
    return m


def test_agent_refuses_orders_of_a_deposed_leader() -> None:
    transfers = _Transfers()
    link = ControllerLink("a:1,b:1", info=None, health=None, transfers=transfers,  # type: ignore[arg-type]
                          heartbeat_interval=1.0, reconnect_max=1.0)
    assert link.targets == ["a:1", "b:1"]
    link._handle(_msg(1, 5, "S"))
    with pytest.raises(_Stale):
        link._handle(_msg(2, 4, "S"))  # older than 5 of the same store: a deposed leader
    link._handle(_msg(3, 5, "S"))
    link._handle(_msg(4, 6, "S"))
    with pytest.raises(_Stale):
        link._handle(_msg(5, 5, "S"))
    link._handle(_msg(6, 1, "T"))  # another store (the agent was moved to a new cluster): its own count
    link._handle(_msg(7, 0, ""))  # a controller without epochs
    assert transfers.cancelled == [1, 3, 4, 6, 7]


def test_controller_lists_and_lease_settings_are_checked() -> None:
    from zcrepl.core.config import ControllerConfig, controller_list, load_config
    from zcrepl.core.errors import ConfigError

    assert controller_list(" a:1, b:2 ,") == ["a:1", "b:2"]
    for bad in ("", "a:1,b", ","):
        with pytest.raises(ConfigError):
            controller_list(bad)
    with pytest.raises(ConfigError, match="lease_renew"):
        load_config(ControllerConfig, None, {"insecure": True, "lease_renew": 3.0, "lease_timeout": 2.0}, environ={})
