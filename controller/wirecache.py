"""Each agent's latest health and identity as ready protobuf messages, for ListAgents and GetAgentHealth.

Why: the controller runs on one asyncio event loop, and building a ``ListAgentsResponse`` from domain objects
(``health_to_pb`` for every agent) took ~20 ms of Python per call at 1,000 agents, plus the contention of a
busy machine; heartbeats arriving meanwhile waited, which was the whole heartbeat p99 tail (bench/scale.py).
A heartbeat already arrives as a ``HostHealth`` message, so the service keeps it and copies it into
responses (a C-level copy in the upb runtime) instead of converting the domain object back per query.

Consistency: an entry remembers the domain object it stands for, and is used only when the status being
sent holds *that very object* (identity, not equality). The registry decides which heartbeat is current
(a stale session's late heartbeat is dropped there); this cache never has to repeat that rule, and a
mismatch (e.g. a health replaced between the snapshot and the build) falls back to converting.

Part of the gRPC adapter: protobuf types stop here and in ``service.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from zcrepl.core.types import AgentInfo, AgentStatus, HostHealth
from zcrepl.proto import controller_pb2 as cpb
from zcrepl.proto import types_pb2 as pb
from zcrepl.proto.convert import agent_info_to_pb, health_to_pb

# Agents per slice of a large response: ~0.5 ms of work at a time on this VM, then the event loop gets a
# turn (heartbeats, reports), so no single response holds it for long whatever the fleet size.
SLICE = 200


class WireCache:
    def __init__(self) -> None:
        self._health: dict[str, tuple[HostHealth, pb.HostHealth]] = {}
        self._info: dict[str, tuple[AgentInfo, pb.AgentInfo]] = {}

    def put_health(self, name: str, health: HostHealth, msg: pb.HostHealth) -> None:
        """Remember ``msg`` as the wire form of ``health`` (the domain object made from it)."""
        self._health[name] = (health, msg)

    def forget(self, name: str) -> None:
        """Drop what is cached for an agent the operator removed."""
        self._health.pop(name, None)
        self._info.pop(name, None)

    def health(self, name: str, health: HostHealth) -> pb.HostHealth:
        entry = self._health.get(name)
        if entry is not None and entry[0] is health:
            return entry[1]
        msg = health_to_pb(health)
        self._health[name] = (health, msg)
        return msg

    def info(self, info: AgentInfo) -> pb.AgentInfo:
        # AgentInfo changes only when an agent (re)registers, so this converts once per connection.
        entry = self._info.get(info.name)
        if entry is not None and entry[0] is info:
            return entry[1]
        msg = agent_info_to_pb(info)
        self._info[info.name] = (info, msg)
        return msg

    def status(self, s: AgentStatus, out: cpb.AgentStatus) -> None:
        """Fill ``out`` (fresh, e.g. from ``response.agents.add()``) with ``s``."""
        out.online, out.last_seen, out.connected_at, out.running_jobs = (s.online, s.last_seen, s.connected_at,
                                                                          s.running_jobs)
        out.info.CopyFrom(self.info(s.info))
        if s.health is not None:
            out.health.CopyFrom(self.health(s.info.name, s.health))
        # History samples are rebuilt from the controller's ring of doubles on request; they are not cached.
        out.history.extend(health_to_pb(h) for h in s.history)

    async def fill(self, names: Sequence[str], statuses: Callable[[list[str]], list[AgentStatus]],
                   agents: RepeatedCompositeFieldContainer[cpb.AgentStatus]) -> None:
        """Append the status of every agent in ``names`` to the repeated field ``agents``, asking
        ``statuses`` for ``SLICE`` agents at a time and yielding to the event loop between slices.

        The domain statuses are sliced too, not only their conversion: on a loaded host the first walk over
        a thousand agents' records is cache-cold and its allocations set off garbage collections, tens of
        milliseconds that would otherwise hold the loop in one piece. Each status is consistent in itself;
        the slices of one response are taken a few milliseconds apart.
        """
        for i in range(0, len(names), SLICE):
            if i:
                await asyncio.sleep(0)
            for s in statuses(list(names[i:i + SLICE])):
                self.status(s, agents.add())
