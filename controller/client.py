"""A typed, synchronous client of the Controller API: what zc-ctl (and scripts) build on.

Every call has a deadline; RpcErrors come back as domain errors whose message says what to do next.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from zcrepl.core.errors import Unavailable
from zcrepl.core.trust import Trust
from zcrepl.core.types import AgentStatus, Endpoint, Job, JobOptions, JobState
from zcrepl.proto import controller_pb2 as cpb
from zcrepl.proto import controller_pb2_grpc
from zcrepl.proto import sync_pb2 as spb
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
    from zcrepl.core.synctypes import SyncRule
    from zcrepl.proto import security_pb2

R = TypeVar("R")


class ControllerClient:
    def __init__(self, target: str, trust: Trust | None = None, timeout: float = 10.0) -> None:
        self.target = target
        self.timeout = timeout
        self._channel = channel(target, trust)
        self._stub = controller_pb2_grpc.ControllerStub(self._channel)
        self._security_stub: Any = None

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

    def _call(self, fn: Callable[..., R], request: object) -> R:
        try:
            return fn(request, timeout=self.timeout, wait_for_ready=False)
        except grpc.RpcError as err:
            raise from_rpc_error(err, self.target) from None

    def submit(self, src: Endpoint, dst: Endpoint, options: JobOptions) -> Job:
        req = cpb.SubmitJobRequest(source=endpoint_to_pb(src), destination=endpoint_to_pb(dst),
                                   options=options_to_pb(options))
        return job_from_pb(self._call(self._stub.SubmitJob, req))

    def submit_fanout(self, src: Endpoint, dsts: list[Endpoint], options: JobOptions) -> list[Job]:
        req = cpb.SubmitFanoutRequest(source=endpoint_to_pb(src), destinations=[endpoint_to_pb(d) for d in dsts],
                                      options=options_to_pb(options))
        return [job_from_pb(j) for j in self._call(self._stub.SubmitFanout, req).jobs]

    def job(self, job_id: int) -> Job:
        return job_from_pb(self._call(self._stub.GetJob, cpb.JobRef(id=job_id)))

    def jobs(self, states: tuple[JobState, ...] = (), limit: int = 0, group_id: int = 0) -> list[Job]:
        req = cpb.ListJobsRequest(states=[state_to_pb(s) for s in states], limit=limit, group_id=group_id)
        return [job_from_pb(j) for j in self._call(self._stub.ListJobs, req).jobs]

    def cancel(self, job_id: int) -> Job:
        return job_from_pb(self._call(self._stub.CancelJob, cpb.JobRef(id=job_id)))

    def explain(self, job_id: int) -> list[tuple[float, str, str]]:
        """The job's decision history: (time, kind, reason), oldest first."""
        resp = self._call(self._stub.ExplainJob, cpb.JobRef(id=job_id))
        return [(d.at, d.kind, d.reason) for d in resp.decisions]

    def agents(self) -> list[AgentStatus]:
        return [agent_status_from_pb(a) for a in self._call(self._stub.ListAgents, cpb.ListAgentsRequest()).agents]

    def health(self, names: list[str], history: int = 0) -> list[AgentStatus]:
        resp = self._call(self._stub.GetAgentHealth, cpb.AgentHealthRequest(names=names, history=history))
        return [agent_status_from_pb(a) for a in resp.agents]

    def remove_agent(self, name: str) -> AgentStatus:
        """Forget an offline agent; Conflict while it is online or named by queued jobs or watch rules."""
        return agent_status_from_pb(self._call(self._stub.RemoveAgent, cpb.AgentRef(name=name)))

    # -- watch rules (their domain types load with the first call) ---------------------------------------
    def create_sync(self, src: Endpoint, dsts: list[Endpoint], options: JobOptions, window: float = 0.0,
                    quiet: float = 0.0) -> SyncRule:
        req = spb.CreateSyncRequest(source=endpoint_to_pb(src), destinations=[endpoint_to_pb(d) for d in dsts],
                                    options=options_to_pb(options), window=window, quiet=quiet)
        from zcrepl.proto.syncconvert import rule_from_pb

        return rule_from_pb(self._call(self._stub.CreateSync, req))

    def syncs(self) -> list[SyncRule]:
        from zcrepl.proto.syncconvert import rule_from_pb

        return [rule_from_pb(r) for r in self._call(self._stub.ListSyncs, spb.ListSyncsRequest()).rules]

    def sync_action(self, action: str, rule_id: int) -> SyncRule:
        """``pause``, ``resume`` or ``remove`` one rule."""
        from zcrepl.proto.syncconvert import rule_from_pb

        fn = {"pause": self._stub.PauseSync, "resume": self._stub.ResumeSync, "remove": self._stub.RemoveSync}[action]
        return rule_from_pb(self._call(fn, spb.SyncRef(id=rule_id)))

    # -- schedules (their domain types load with the first call) ----------------------------------------
    def create_schedule(self, src: Endpoint, dst: Endpoint, options: JobOptions, cron: str = "", every: float = 0.0,
                        tz: str = "") -> Schedule:
        from zcrepl.proto import schedule_pb2 as schpb
        from zcrepl.proto.scheduleconvert import schedule_from_pb

        req = schpb.CreateScheduleRequest(source=endpoint_to_pb(src), destination=endpoint_to_pb(dst),
                                          options=options_to_pb(options), cron=cron, every=every, tz=tz)
        return schedule_from_pb(self._call(self._stub.CreateSchedule, req))

    def schedules(self) -> list[Schedule]:
        from zcrepl.proto import schedule_pb2 as schpb
        from zcrepl.proto.scheduleconvert import schedule_from_pb

        resp = self._call(self._stub.ListSchedules, schpb.ListSchedulesRequest())
        return [schedule_from_pb(s) for s in resp.schedules]

    def schedule_action(self, action: str, schedule_id: int) -> Schedule:
        """``pause``, ``resume`` or ``remove`` one schedule."""
        from zcrepl.proto import schedule_pb2 as schpb
        from zcrepl.proto.scheduleconvert import schedule_from_pb

        fn = {"pause": self._stub.PauseSchedule, "resume": self._stub.ResumeSchedule,
              "remove": self._stub.RemoveSchedule}[action]
        return schedule_from_pb(self._call(fn, schpb.ScheduleRef(id=schedule_id)))

    # -- certificates ---------------------------------------------------------------------------------
    def create_token(self, agent: str, ttl: float = 0.0) -> security_pb2.JoinToken:
        from zcrepl.proto import security_pb2

        tok: security_pb2.JoinToken = self._call(self._security.CreateJoinToken,
                                                 security_pb2.JoinTokenRequest(agent=agent, ttl=ttl))
        return tok

    def revoke(self, name: str = "", serial: str = "") -> list[tuple[str, str, float]]:
        from zcrepl.proto import security_pb2

        resp = self._call(self._security.RevokeCertificate, security_pb2.RevokeRequest(name=name, serial=serial))
        return [(r.serial, r.name, r.revoked_at) for r in resp.revoked]

    def revoked(self) -> list[tuple[str, str, float]]:
        from zcrepl.proto import security_pb2

        resp = self._call(self._security.ListRevoked, security_pb2.ListRevokedRequest())
        return [(r.serial, r.name, r.revoked_at) for r in resp.revoked]

    def watch(self, job_id: int, reconnect_for: float = 60.0) -> Iterator[Job]:
        """Job snapshots until it is final; rides out a controller restart for ``reconnect_for`` seconds."""
        down_since: float | None = None
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
                time.sleep(0.5)
