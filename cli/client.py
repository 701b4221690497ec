"""A typed, synchronous client of the Controller API: what zc-ctl (and scripts) build on.

Every call has a deadline; RpcErrors come back as domain errors whose message says what to do next.

``target`` may list several controllers (``a:7420,b:7420,c:7420``: one PostgreSQL store, one leader). The
client follows the leader on its own: a follower answers reads itself and ends writes with UNAVAILABLE naming
the leader (the ``zc-leader`` trailer), which the client calls next; a controller out of reach sends it to the
next one of the list, and after a whole round it waits (backoff up to ``ROUND_MAX`` s) and tries again, for
``patience`` seconds in all. A write retried after a controller died mid-call may have been committed there
(the leader's answer was lost with it): submits and new watch rules carry a request id (a UUID made here, the
same on every retry), and the leader answers a repeat with what the first call made, so they are made once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from zcrepl.cli.dial import targets
from zcrepl.core.errors import Unavailable
from zcrepl.core.trust import Trust
from zcrepl.core.types import AgentStatus, Endpoint, Job, JobOptions, JobState
from zcrepl.proto import controller_pb2 as cpb
from zcrepl.proto import controller_pb2_grpc
from zcrepl.proto import watchrules_pb2 as spb
from zcrepl.proto.channels import channel
from zcrepl.proto.convert import (
    agent_status_from_pb,
    endpoint_to_pb,
    job_from_pb,
    options_to_pb,
    state_to_pb,
)
from zcrepl.proto.errors import from_rpc_error

if TYPE_CHECKING:
    from zcrepl.core.schedtypes import Schedule
    from zcrepl.core.watchtypes import WatchRule
    from zcrepl.proto import security_pb2

R = TypeVar("R")
LEADER_KEY = "zc-leader"  # controller/follower.py
ROUND_MAX = 2.0  # seconds at most between two rounds of the controller list
STEP = 0.05  # seconds before the next controller of a round (a stale leader address must not make a busy loop)


def _leader(err: grpc.RpcError) -> str | None:
    """The leader a follower named in its UNAVAILABLE ('' while none leads), or None when it named none."""
    if not hasattr(err, "code") or err.code() is not grpc.StatusCode.UNAVAILABLE:
        return None
    for key, value in (err.trailing_metadata() if hasattr(err, "trailing_metadata") else None) or ():
        if key == LEADER_KEY:
            return str(value)
    return None


def _request_id() -> str:
    """One per write, kept across its retries (controller/requests.py): a random (version 4) UUID, written out
    here because the uuid module costs ~1 ms of every zc-ctl start (it imports platform)."""
    b = bytearray(os.urandom(16))
    b[6] = b[6] & 0x0F | 0x40  # version 4
    b[8] = b[8] & 0x3F | 0x80  # the RFC 4122 variant
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class ControllerClient:
    def __init__(self, target: str, trust: Trust | None = None, timeout: float = 10.0, patience: float = 15.0,
                 dialled: grpc.Channel | None = None) -> None:
        """``dialled``: a channel to the first controller of ``target``, made with ``trust`` (and maybe connected
        already: ``dial.connect_early``); the client owns it from here."""
        self.targets = targets(target)
        self.timeout = timeout
        self.patience = patience
        self.trust = trust
        self._open(self.targets[0], dialled)

    def _open(self, target: str, dialled: grpc.Channel | None = None) -> None:
        self.target = target
        self._channel = dialled or channel(target, self.trust)
        self._stub = controller_pb2_grpc.ControllerStub(self._channel)
        self._security_stub: Any = None

    def _follow(self, err: grpc.RpcError, rounds: list[float]) -> bool:
        """After an UNAVAILABLE: point the client at the controller to try next and wait as needed; False when
        there is none left to try (one controller that is out of reach, or patience spent)."""
        leader = _leader(err)
        if leader is None and len(self.targets) == 1:
            return False
        if time.monotonic() > rounds[1]:
            return False
        if leader:
            nxt = leader
        else:
            at = self.targets.index(self.target) + 1 if self.target in self.targets else 0
            nxt = self.targets[at % len(self.targets)]
            if at >= len(self.targets) or leader == "":  # a whole round, or a failover under way: wait a little
                from zcrepl.core.backoff import backoff_delay  # (and random) only when a controller is away

                rounds[0] += 1
                time.sleep(backoff_delay(int(rounds[0]), 0.2, ROUND_MAX))
            else:
                time.sleep(STEP)
        if nxt != self.target:
            self._channel.close()
            self._open(nxt)
        return True

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ControllerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _security(self) -> Any:
        # The Security service's descriptors load only for the certificate commands.
        if self._security_stub is None:
            from zcrepl.proto import security_pb2_grpc

            self._security_stub = security_pb2_grpc.SecurityStub(self._channel)
        return self._security_stub

    def _call(self, fn: Callable[[], Callable[..., R]], request: object) -> R:
        """``fn()`` gives the method to call (looked up again after the client moved to another controller)."""
        rounds = [0.0, time.monotonic() + self.patience]
        while True:
            try:
                return fn()(request, timeout=self.timeout, wait_for_ready=False)
            except grpc.RpcError as err:
                if err.code() is not grpc.StatusCode.UNAVAILABLE or not self._follow(err, rounds):
                    raise from_rpc_error(err, self.target) from None

    def submit(self, src: Endpoint, dst: Endpoint, options: JobOptions) -> Job:
        req = cpb.SubmitJobRequest(source=endpoint_to_pb(src), destination=endpoint_to_pb(dst),
                                   options=options_to_pb(options), request_id=_request_id())
        return job_from_pb(self._call(lambda: self._stub.SubmitJob, req))

    def submit_fanout(self, src: Endpoint, dsts: list[Endpoint], options: JobOptions) -> list[Job]:
        req = cpb.SubmitFanoutRequest(source=endpoint_to_pb(src), destinations=[endpoint_to_pb(d) for d in dsts],
                                      options=options_to_pb(options), request_id=_request_id())
        return [job_from_pb(j) for j in self._call(lambda: self._stub.SubmitFanout, req).jobs]

    def job(self, job_id: int) -> Job:
        return job_from_pb(self._call(lambda: self._stub.GetJob, cpb.JobRef(id=job_id)))

    def jobs(self, states: tuple[JobState, ...] = (), limit: int = 0, group_id: int = 0) -> list[Job]:
        req = cpb.ListJobsRequest(states=[state_to_pb(s) for s in states], limit=limit, group_id=group_id)
        return [job_from_pb(j) for j in self._call(lambda: self._stub.ListJobs, req).jobs]

    def cancel(self, job_id: int) -> Job:
        return job_from_pb(self._call(lambda: self._stub.CancelJob, cpb.JobRef(id=job_id)))

    def explain(self, job_id: int) -> list[tuple[float, str, str]]:
        """The job's decision history: (time, kind, reason), oldest first."""
        resp = self._call(lambda: self._stub.ExplainJob, cpb.JobRef(id=job_id))
        return [(d.at, d.kind, d.reason) for d in resp.decisions]

    def agents(self) -> list[AgentStatus]:
        resp = self._call(lambda: self._stub.ListAgents, cpb.ListAgentsRequest())
        return [agent_status_from_pb(a) for a in resp.agents]

    def health(self, names: list[str], history: int = 0) -> list[AgentStatus]:
        resp = self._call(lambda: self._stub.GetAgentHealth, cpb.AgentHealthRequest(names=names, history=history))
        return [agent_status_from_pb(a) for a in resp.agents]

    def remove_agent(self, name: str) -> AgentStatus:
        """Forget an offline agent; Conflict while it is online or named by queued jobs or watch rules."""
        return agent_status_from_pb(self._call(lambda: self._stub.RemoveAgent, cpb.AgentRef(name=name)))

    # -- watch rules (their domain types load with the first call) ---------------------------------------
    def create_watch_rule(self, src: Endpoint, dsts: list[Endpoint], options: JobOptions, window: float = 0.0,
                    quiet: float = 0.0) -> WatchRule:
        req = spb.CreateWatchRuleRequest(source=endpoint_to_pb(src), destinations=[endpoint_to_pb(d) for d in dsts],
                                    options=options_to_pb(options), window=window, quiet=quiet,
                                    request_id=_request_id())
        from zcrepl.proto.watchconvert import rule_from_pb

        return rule_from_pb(self._call(lambda: self._stub.CreateWatchRule, req))

    def watch_rules(self) -> list[WatchRule]:
        from zcrepl.proto.watchconvert import rule_from_pb

        listed = self._call(lambda: self._stub.ListWatchRules, spb.ListWatchRulesRequest())
        return [rule_from_pb(r) for r in listed.rules]

    def watch_rule_action(self, action: str, rule_id: int) -> WatchRule:
        """``pause``, ``resume`` or ``remove`` one rule."""
        from zcrepl.proto.watchconvert import rule_from_pb

        name = {"pause": "PauseWatchRule", "resume": "ResumeWatchRule", "remove": "RemoveWatchRule"}[action]
        return rule_from_pb(self._call(lambda: getattr(self._stub, name), spb.WatchRef(id=rule_id)))

    # -- schedules (their domain types load with the first call) ----------------------------------------
    def create_schedule(self, src: Endpoint, dst: Endpoint, options: JobOptions, cron: str = "", every: float = 0.0,
                        tz: str = "") -> Schedule:
        from zcrepl.proto import schedule_pb2 as schpb
        from zcrepl.proto.scheduleconvert import schedule_from_pb

        req = schpb.CreateScheduleRequest(source=endpoint_to_pb(src), destination=endpoint_to_pb(dst),
                                          options=options_to_pb(options), cron=cron, every=every, tz=tz,
                                          request_id=_request_id())
        return schedule_from_pb(self._call(lambda: self._stub.CreateSchedule, req))

    def schedules(self) -> list[Schedule]:
        from zcrepl.proto import schedule_pb2 as schpb
        from zcrepl.proto.scheduleconvert import schedule_from_pb

        resp = self._call(lambda: self._stub.ListSchedules, schpb.ListSchedulesRequest())
        return [schedule_from_pb(s) for s in resp.schedules]

    def schedule_action(self, action: str, schedule_id: int) -> Schedule:
        """``pause``, ``resume`` or ``remove`` one schedule."""
        from zcrepl.proto import schedule_pb2 as schpb
        from zcrepl.proto.scheduleconvert import schedule_from_pb

        name = {"pause": "PauseSchedule", "resume": "ResumeSchedule", "remove": "RemoveSchedule"}[action]
        return schedule_from_pb(self._call(lambda: getattr(self._stub, name), schpb.ScheduleRef(id=schedule_id)))

    # -- certificates ---------------------------------------------------------------------------------
    def create_token(self, agent: str, ttl: float = 0.0) -> security_pb2.JoinToken:
        from zcrepl.proto import security_pb2

        tok: security_pb2.JoinToken = self._call(lambda: self._security.CreateJoinToken,
                                                 security_pb2.JoinTokenRequest(agent=agent, ttl=ttl))
        return tok

    def revoke(self, name: str = "", serial: str = "") -> list[tuple[str, str, float]]:
        from zcrepl.proto import security_pb2

        req = security_pb2.RevokeRequest(name=name, serial=serial)
        resp = self._call(lambda: self._security.RevokeCertificate, req)
        return [(r.serial, r.name, r.revoked_at) for r in resp.revoked]

    def revoked(self) -> list[tuple[str, str, float]]:
        from zcrepl.proto import security_pb2

        resp = self._call(lambda: self._security.ListRevoked, security_pb2.ListRevokedRequest())
        return [(r.serial, r.name, r.revoked_at) for r in resp.revoked]

    def watch(self, job_id: int, reconnect_for: float = 60.0) -> Iterator[Job]:
        """Job snapshots until it is final; rides out a controller restart for ``reconnect_for`` seconds."""
        down_since: float | None = None
        rounds = [0.0, time.monotonic() + reconnect_for]
        while True:
            try:
                for m in self._stub.WatchJob(cpb.JobRef(id=job_id)):
                    down_since = None
                    job = job_from_pb(m)
                    yield job
                    if job.state.final:
                        return
            except grpc.RpcError as err:
                domain = from_rpc_error(err, self.target)
                if not isinstance(domain, Unavailable):
                    raise domain from None
                now = time.monotonic()
                down_since = down_since or now
                if now - down_since > reconnect_for:
                    raise domain from None
                if not self._follow(err, rounds):
                    time.sleep(0.5)
