"""Tests for zcrepl.controller.registry: liveness table, session attach/replace/detach, heartbeats, status."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from zcrepl.controller.registry import HealthHistory, Registry, Session, is_online
from zcrepl.core.types import AgentInfo, AgentStatus, HostHealth

OFFLINE_AFTER = 5.0
INFO = AgentInfo(name="hostA", grpc_address="10.0.0.1:7421", exports=(b"/srv",))


def health(t: float) -> HostHealth:
    return HostHealth(sampled_at=t, cpu_percent=t)


def replace_info(**kw: object) -> AgentInfo:
    return replace(INFO, **kw)  # type: ignore[arg-type]


def session(info: AgentInfo = INFO, at: float = 100.0) -> Session:
    return Session(info=info, connected_at=at, last_seen=at)


@pytest.fixture
def reg() -> Registry:
    return Registry(OFFLINE_AFTER)


# -- is_online --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stream_open", "last_seen", "now", "expected"),
    [
        (True, 100.0, 100.0, True),
        (True, 100.0, 104.9, True),
        (True, 100.0, 105.0, True),  # boundary: exactly offline_after is still online
        (True, 100.0, 105.1, False),
        (True, 100.0, 99.0, True),  # clock went backwards: not offline
        (False, 100.0, 100.0, False),
        (False, 100.0, 200.0, False),
    ],
)
def test_is_online(stream_open: bool, last_seen: float, now: float, expected: bool) -> None:
    assert is_online(stream_open, last_seen, now, OFFLINE_AFTER) is expected


# -- Session ----------------------------------------------------------------------------------------


def test_session_ids_are_unique() -> None:
    a, b = session(), session()
    assert a.id != b.id
    assert a != b  # identity, not field equality


def test_session_close_sends_one_sentinel() -> None:
    s = session()
    s.close()
    s.close()
    assert not s.open
    assert s.outbox.qsize() == 1
    assert s.outbox.get_nowait() is None


def test_session_outbox_works_in_a_loop() -> None:
    async def main() -> list[object]:
        s = session()
        s.outbox.put_nowait("msg")
        s.close()
        return [await s.outbox.get(), await s.outbox.get()]

    assert asyncio.run(main()) == ["msg", None]


# -- attach / detach --------------------------------------------------------------------------------


def test_attach_new_agent(reg: Registry) -> None:
    s = session()
    assert reg.attach(s) is None
    assert reg.known("hostA")
    assert reg.session("hostA") is s
    assert reg.agents["hostA"].last_seen == 100.0


def test_attach_replaces_and_returns_old(reg: Registry) -> None:
    old, new = session(at=100.0), session(replace_info(version="2"), at=110.0)
    reg.attach(old)
    assert reg.attach(new) is old
    assert reg.session("hostA") is new
    assert reg.agents["hostA"].info.version == "2"
    assert reg.agents["hostA"].last_seen == 110.0
    assert old.open  # closing the old stream is the caller's job


def test_attach_same_session_twice_returns_none(reg: Registry) -> None:
    s = session()
    reg.attach(s)
    assert reg.attach(s) is None


def test_attach_after_detach_returns_none(reg: Registry) -> None:
    old = session()
    reg.attach(old)
    reg.detach(old)
    assert reg.attach(session()) is None


def test_attach_keeps_health_history(reg: Registry) -> None:
    old = session()
    reg.attach(old)
    reg.heartbeat(old, health(101.0), 101.0)
    reg.attach(session(at=102.0))
    assert reg.agents["hostA"].health == health(101.0)
    assert reg.agents["hostA"].history.last(10) == [health(101.0)]


def test_detach_current(reg: Registry) -> None:
    s = session()
    reg.attach(s)
    assert reg.detach(s) is True
    assert reg.session("hostA") is None
    assert reg.known("hostA")  # the agent is remembered, just offline
    assert not reg.online("hostA", 100.0)


def test_detach_stale_session_keeps_current(reg: Registry) -> None:
    old, new = session(), session()
    reg.attach(old)
    reg.attach(new)
    assert reg.detach(old) is False
    assert reg.session("hostA") is new


def test_detach_twice(reg: Registry) -> None:
    s = session()
    reg.attach(s)
    assert reg.detach(s) is True
    assert reg.detach(s) is False


def test_detach_unknown_agent(reg: Registry) -> None:
    assert reg.detach(session()) is False


def test_session_hides_closed_stream(reg: Registry) -> None:
    s = session()
    reg.attach(s)
    s.close()
    assert reg.session("hostA") is None
    assert reg.session("nobody") is None


# -- load -------------------------------------------------------------------------------------------


def test_load_remembers_offline_agent(reg: Registry) -> None:
    reg.load("hostA", INFO, 50.0)
    assert reg.known("hostA")
    assert not reg.online("hostA", 50.0)
    assert reg.agents["hostA"].last_seen == 50.0


def test_load_does_not_override_live_record(reg: Registry) -> None:
    s = session()
    reg.attach(s)
    reg.load("hostA", replace_info(version="old"), 1.0)
    assert reg.agents["hostA"].info == INFO
    assert reg.session("hostA") is s


# -- heartbeat and liveness -------------------------------------------------------------------------


def test_heartbeat_updates_health_and_history(reg: Registry) -> None:
    s = session()
    reg.attach(s)
    for t in (101.0, 102.0, 103.0):
        reg.heartbeat(s, health(t), t)
    rec = reg.agents["hostA"]
    assert rec.health == health(103.0)
    assert rec.history.last(10) == [health(101.0), health(102.0), health(103.0)]
    assert rec.history.last(2) == [health(102.0), health(103.0)]
    assert rec.last_seen == 103.0
    assert s.last_seen == 103.0


def test_heartbeat_history_is_bounded() -> None:
    reg = Registry(OFFLINE_AFTER)
    s = session(at=0.0)
    reg.attach(s)
    for t in range(1000):
        reg.heartbeat(s, health(float(t)), float(t))
    hist = reg.agents["hostA"].history
    assert hist is not None and hist.maxlen == 900 and hist.capacity == 900
    assert len(hist) == 900
    assert hist.last(900)[0] == health(100.0)
    assert hist.last(900)[-1] == health(999.0)


def test_history_is_allocated_only_by_heartbeats() -> None:
    """A registration alone costs no history (1,000 fake registrations used to cost 137 KiB each)."""
    reg = Registry(OFFLINE_AFTER)
    for i in range(1000):
        reg.attach(session(AgentInfo(f"fake{i}"), at=0.0))
    assert all(rec.history is None for rec in reg.agents.values())
    assert reg.status("fake1", 0.0, history=10).history == ()
    s = session(at=0.0)
    reg.attach(s)
    reg.heartbeat(s, health(1.0), 1.0)
    hist = reg.agents["hostA"].history
    assert hist is not None and hist.capacity == HealthHistory.START  # a few KiB until the ring fills


def test_history_grows_in_order_then_wraps() -> None:
    h = HealthHistory(maxlen=40)
    for t in range(100):
        h.append(health(float(t)))
        expect = [health(float(x)) for x in range(max(0, t - 39), t + 1)]
        assert h.last(100) == expect, t
        assert h.capacity <= 40
    assert h.capacity == 40 and len(h._buf) == 40 * len(HealthHistory.FIELDS)


def test_history_keeps_scalar_figures_without_objects() -> None:
    import array
    import gc

    from zcrepl.controller.registry import HealthHistory

    h = HealthHistory(maxlen=3)
    full = HostHealth(sampled_at=5.0, cpu_percent=12.5, cpu_count=2, load1=0.5, mem_total=10, mem_available=7,
                      net_sent_bps=3.0, active_transfers=2, cpu_per_core=(10.0, 15.0))
    h.append(full)
    (got,) = h.last(5)
    assert got == replace(full, cpu_per_core=())  # per-core detail lives only in the latest sample
    assert gc.get_referents(h._buf) == [array.array]  # only its type: no per-sample objects to walk


def test_heartbeat_from_stale_session_is_ignored(reg: Registry) -> None:
    old, new = session(), session()
    reg.attach(old)
    reg.attach(new)
    reg.heartbeat(old, health(150.0), 150.0)
    rec = reg.agents["hostA"]
    assert rec.health is None
    assert rec.history is None
    assert rec.last_seen == 100.0
    assert old.last_seen == 150.0  # the session itself still saw it


def test_heartbeat_from_unknown_agent(reg: Registry) -> None:
    s = session()
    reg.heartbeat(s, health(1.0), 101.0)
    assert not reg.known("hostA")
    assert s.last_seen == 101.0


@pytest.mark.parametrize(
    ("heartbeat_at", "now", "expected"),
    [(None, 104.0, True), (None, 105.0, True), (None, 105.5, False), (110.0, 114.0, True), (110.0, 116.0, False)],
)
def test_online(reg: Registry, heartbeat_at: float | None, now: float, expected: bool) -> None:
    s = session(at=100.0)
    reg.attach(s)
    if heartbeat_at is not None:
        reg.heartbeat(s, health(heartbeat_at), heartbeat_at)
    assert reg.online("hostA", now) is expected


def test_online_false_for_unknown_and_closed(reg: Registry) -> None:
    assert not reg.online("nobody", 0.0)
    s = session()
    reg.attach(s)
    s.close()
    assert not reg.online("hostA", 100.0)


# -- silent -----------------------------------------------------------------------------------------


def test_silent_lists_hung_open_sessions(reg: Registry) -> None:
    hung = session(AgentInfo("hung"), at=100.0)
    fresh = session(AgentInfo("fresh"), at=100.0)
    closed = session(AgentInfo("closed"), at=100.0)
    gone = session(AgentInfo("gone"), at=100.0)
    for s in (hung, fresh, closed, gone):
        reg.attach(s)
    reg.heartbeat(fresh, health(108.0), 108.0)
    closed.close()
    reg.detach(gone)
    assert reg.silent(110.0) == [hung]


@pytest.mark.parametrize(("now", "silent"), [(105.0, False), (105.01, True)])
def test_silent_boundary_matches_online(reg: Registry, now: float, silent: bool) -> None:
    s = session(at=100.0)
    reg.attach(s)
    assert (reg.silent(now) == [s]) is silent
    assert reg.online("hostA", now) is not silent


# -- status -----------------------------------------------------------------------------------------


def test_status_online(reg: Registry) -> None:
    s = session(at=100.0)
    reg.attach(s)
    reg.heartbeat(s, health(103.0), 103.0)
    assert reg.status("hostA", 104.0, running_jobs=2) == AgentStatus(
        info=INFO, online=True, last_seen=103.0, connected_at=100.0, health=health(103.0), running_jobs=2)


def test_status_silent_agent_is_offline_but_connected(reg: Registry) -> None:
    reg.attach(session(at=100.0))
    st = reg.status("hostA", 200.0)
    assert not st.online
    assert st.connected_at == 100.0
    assert st.running_jobs == 0


def test_status_after_detach(reg: Registry) -> None:
    s = session(at=100.0)
    reg.attach(s)
    reg.heartbeat(s, health(101.0), 101.0)
    reg.detach(s)
    st = reg.status("hostA", 101.0)
    assert (st.online, st.connected_at, st.last_seen, st.health) == (False, 0.0, 101.0, health(101.0))


def test_status_of_loaded_agent(reg: Registry) -> None:
    reg.load("hostA", INFO, 42.0)
    assert reg.status("hostA", 43.0) == AgentStatus(info=INFO, online=False, last_seen=42.0)


def test_status_unknown_agent_raises(reg: Registry) -> None:
    with pytest.raises(KeyError):
        reg.status("nobody", 0.0)
