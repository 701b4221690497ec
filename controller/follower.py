"""What a follower (a controller that does not hold the lease, see leadership.py) answers, and how it sends
writers to the leader.

Reads come from the store, which every controller shares: jobs, explain and watch rules as committed by the
leader. Live agent state is the leader's alone (its registry holds the streams, health and history); a follower
lists the stored agents with the last time the leader saw them (the leader notes online agents in the store
every ``AGENT_TOUCH`` seconds), counts an agent online when that is recent, and has no health figures. Writes
(submit, cancel, watch-rule changes, agent removal) and agents' streams get UNAVAILABLE with the leader's
address in the trailing metadata key ``zc-leader`` (empty while no controller leads), which the agents and
zc-ctl follow on their own.
"""

from __future__ import annotations

import grpc

from zcrepl.controller.leading import AGENT_TOUCH
from zcrepl.controller.store import Store
from zcrepl.controller.watchrule_store import WatchRulesSql
from zcrepl.core.types import AgentStatus
from zcrepl.core.watchtypes import WatchRule

LEADER_KEY = "zc-leader"


def not_leader_words(me: str, leader: str) -> str:
    where = f"the leader is {leader}" if leader else "no controller leads right now (a failover is under way)"
    return (f"this controller ({me}) is a follower: {where}; send writes there, or give zc-ctl and zc-agent every "
            "controller (--controller a:7420,b:7420,c:7420) and they follow the leader")


async def redirect(context: grpc.aio.ServicerContext, me: str, leader: str) -> None:
    """End the call with UNAVAILABLE naming the leader (raises, as ``context.abort`` does)."""
    await context.abort(grpc.StatusCode.UNAVAILABLE, not_leader_words(me, leader),
                        trailing_metadata=((LEADER_KEY, leader),))


async def agents(store: Store, names: list[str], now: float, offline_after: float) -> list[AgentStatus]:
    stored = await store.call(store.sql.agents)
    wanted = names or sorted(stored)
    return [AgentStatus(info=stored[n][0], last_seen=stored[n][1],
                        online=now - stored[n][1] <= offline_after + AGENT_TOUCH)
            for n in wanted if n in stored]


async def rules(store: Store) -> list[WatchRule]:
    return await store.call(WatchRulesSql(store.db).all)
