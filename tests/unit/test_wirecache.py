"""Tests for zcrepl.controller.wirecache: responses built from cached wire messages equal the plain conversion,
and a cached message is used only for the very health object it was made from."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from zcrepl.controller import wirecache
from zcrepl.controller.wirecache import WireCache
from zcrepl.core.types import AgentInfo, AgentStatus, DiskIO, DiskUsage, HostHealth, NetIO
from zcrepl.proto import controller_pb2 as cpb
from zcrepl.proto.convert import agent_status_from_pb, agent_status_to_pb, health_from_pb, health_to_pb


def sample(i: int) -> HostHealth:
    return HostHealth(sampled_at=1000.0 + i, cpu_percent=10.0 + i, cpu_per_core=(5.0, 15.0 + i), cpu_count=2,
                      load1=0.5, mem_total=8 << 30, mem_available=4 << 30,
                      exports=(DiskUsage(b"/srv/\xff", 100, 40, 60, 40.0),),
                      disks=(DiskIO("sda", 1.0, 2.0, 30.0 + i),), nics=(NetIO("eth0", 3.0, 4.0, 10_000),),
                      active_transfers=i)


def status(i: int, health: HostHealth | None, history: tuple[HostHealth, ...] = ()) -> AgentStatus:
    info = AgentInfo(name=f"host{i:03d}", grpc_address="10.0.0.1:7421", exports=(b"/srv/\xff",), pid=7)
    return AgentStatus(info=info, online=bool(i % 2), last_seen=99.0 + i, connected_at=50.0, health=health,
                       running_jobs=i % 3, history=history)


def lookup(statuses: list[AgentStatus], calls: list[list[str]] | None = None
           ) -> Callable[[list[str]], list[AgentStatus]]:
    by_name = {s.info.name: s for s in statuses}

    def get(names: list[str]) -> list[AgentStatus]:
        if calls is not None:
            calls.append(names)
        return [by_name[n] for n in names]

    return get


def build(cache: WireCache, statuses: list[AgentStatus]) -> cpb.ListAgentsResponse:
    out = cpb.ListAgentsResponse()
    asyncio.run(cache.fill([s.info.name for s in statuses], lookup(statuses), out.agents))
    return out


def test_response_equals_plain_conversion_with_and_without_cached_messages() -> None:
    cache = WireCache()
    statuses = [status(i, sample(i) if i % 5 else None, (sample(i - 1),) if i == 7 else ()) for i in range(450)]
    for s in statuses[: 300]:
        if s.health is not None:  # as the service does on heartbeat arrival
            cache.put_health(s.info.name, s.health, health_to_pb(s.health))
    expected = cpb.ListAgentsResponse(agents=[agent_status_to_pb(s) for s in statuses])  # type: ignore[misc]
    got = build(cache, statuses)
    assert got == expected
    assert [agent_status_from_pb(m) for m in got.agents] == statuses  # round trip, non-UTF-8 path included


def test_cached_message_is_used_only_for_its_own_health_object() -> None:
    cache = WireCache()
    old, new = sample(1), sample(2)
    marker = health_to_pb(old)
    marker.open_fds = 4242  # a field no conversion would produce: shows where the message came from
    cache.put_health("host001", old, marker)
    assert cache.health("host001", old).open_fds == 4242
    # An equal but distinct object (e.g. the same figures from a later heartbeat) must not reuse it either.
    twin = HostHealth(**{k: getattr(old, k) for k in old.__dataclass_fields__})
    assert twin == old and health_from_pb(cache.health("host001", twin)) == old
    assert cache.health("host001", twin).open_fds == 0
    assert health_from_pb(cache.health("host001", new)) == new


def test_large_responses_are_built_in_slices_that_yield_to_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Statuses are asked for a slice at a time, and other coroutines (heartbeats) run between slices."""
    monkeypatch.setattr(wirecache, "SLICE", 10)
    statuses = [status(i, sample(i)) for i in range(55)]
    seen: list[int] = []
    calls: list[list[str]] = []

    async def main() -> None:
        out = cpb.ListAgentsResponse()

        async def other() -> None:
            for _ in range(10):
                seen.append(len(out.agents))
                await asyncio.sleep(0)

        names = [s.info.name for s in statuses]
        await asyncio.gather(WireCache().fill(names, lookup(statuses, calls), out.agents), other())
        assert [m.info.name for m in out.agents] == names

    asyncio.run(main())
    assert [len(c) for c in calls] == [10, 10, 10, 10, 10, 5]
    assert any(0 < n < 55 for n in seen), seen
