"""The Controller gRPC service (grpc.aio): converts wire messages and calls into the Engine."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable

import grpc

from zcrepl.controller import follower, requests, validate
from zcrepl.controller.dataplane import peer_host
from zcrepl.controller.engine import Engine
from zcrepl.controller.registry import Session
from zcrepl.controller.wirecache import WireCache
from zcrepl.core.errors import Conflict, InvalidArgument, InvalidPath, Unavailable
from zcrepl.core.logs import kv
from zcrepl.core.paths import canonical_abs, show
from zcrepl.core.types import AgentStatus, Endpoint
from zcrepl.core.version import VERSION
from zcrepl.proto import controller_pb2 as cpb
from zcrepl.proto import controller_pb2_grpc, types_pb2
from zcrepl.proto import schedule_pb2 as schpb
from zcrepl.proto import watchrules_pb2 as spb
from zcrepl.proto.auth import caller
from zcrepl.proto.convert import (
    agent_info_from_pb,
    agent_status_to_pb,
    endpoint_from_pb,
    health_from_pb,
    health_to_pb,
    job_to_pb,
    options_from_request,
    report_from_pb,
    states_from_request,
)
from zcrepl.proto.orders import order_to_pb
from zcrepl.proto.scheduleconvert import schedule_to_pb
from zcrepl.proto.watchconvert import rule_to_pb, status_from_pb

log = logging.getLogger(__name__)
SERVICE_NAME = cpb.DESCRIPTOR.services_by_name["Controller"].full_name
REGISTER_TIMEOUT = 10.0


def _endpoints(source: types_pb2.Endpoint, destinations: Iterable[types_pb2.Endpoint]
               ) -> tuple[Endpoint, list[Endpoint]]:
    """Source and destinations of a request, each with a valid agent name and an absolute, canonical path."""
    src = endpoint_from_pb(source)
    dsts = [endpoint_from_pb(d) for d in destinations]
    validate.destinations(len(dsts))
    for ep in (src, *dsts):
        if not ep.host:
            raise InvalidPath("source and destinations need a host: write HOST:/path")
        validate.host_name(ep.host, "host")
        canonical_abs(ep.path, what=f"{ep.host}:{show(ep.path[:200])}")
    return src, dsts


class ControllerService(controller_pb2_grpc.ControllerServicer):
    def __init__(self, engine: Engine, leader: Callable[[], str] = lambda: "", me: Callable[[], str] = lambda: ""
                 ) -> None:
        self.engine = engine
        self.wire = WireCache()
        self.leader = leader  # the leader's address as this controller last read it (followers redirect there)
        self.me = me
        self.requests = requests.Requests(engine.store)

    async def _lead(self, context: grpc.aio.ServicerContext) -> int:
        """Writes and agents' streams only on the leader: a follower names the leader and ends the call. Returns
        the store's generation, for ``_commit``."""
        if not self.engine.leading:
            await follower.redirect(context, self.me(), self.leader())
        return self.engine.store.generation

    async def _commit(self, generation: int) -> None:
        """Wait until this call's writes are committed; Unavailable when the lease was lost meanwhile (the writes
        of a deposed leader are dropped, see Store.fence)."""
        await self.engine.store.flush()
        if self.engine.store.generation != generation:
            raise Unavailable("this controller lost the lease before the change was committed, and it was dropped; "
                              "run the command again (zc-ctl finds the new leader; zc-ctl jobs shows what exists)")

    async def Connect(self, request_iterator: AsyncIterator[cpb.AgentMessage],  # type: ignore[override]
                      context: grpc.aio.ServicerContext) -> None:
        await self._lead(context)
        try:
            first = await asyncio.wait_for(context.read(), REGISTER_TIMEOUT)
        except TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "no Register message within 10s")
            return
        if first is grpc.aio.EOF or first.WhichOneof("kind") != "register":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be Register")
            return
        info = agent_info_from_pb(first.register.info)
        try:
            validate.agent_info(info)
            validate.active_refs(len(first.register.active), info.name)
        except InvalidArgument as err:
            log.warning("registration refused", extra=kv(peer=context.peer(), reason=str(err)))
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
            return
        ident = caller()
        if ident is not None and ident.name != info.name:
            log.warning("registration refused: name differs from the certificate",
                        extra=kv(certificate=ident.uri, claimed=info.name))
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"this certificate is for agent {ident.name}; it may not register as {info.name}")
            return
        try:
            session = self.engine.connect(info, [(r.job_id, r.attempt) for r in first.register.active],
                                          serial=ident.serial if ident else 0, peer_host=peer_host(context.peer()))
        except Conflict as err:
            log.warning("registration refused", extra=kv(agent=info.name, host=info.name, reason=err))
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(err))
            return
        reader = asyncio.create_task(self._read(context, session))
        # Every message down this stream carries the epoch the session was opened under: a leader deposed since
        # closes it, and an agent that has seen a newer epoch refuses what it still sends.
        epoch, store_id = self.engine.epoch, self.engine.store_id
        try:
            await context.write(cpb.ControllerMessage(welcome=cpb.Welcome(
                heartbeat_interval=self.engine.config.heartbeat_interval, controller_version=VERSION,
                attempt_grace=self.engine.config.attempt_grace), leader_epoch=epoch, store_id=store_id))
            while True:
                order = await session.outbox.get()
                if order is None:
                    break
                msg = order_to_pb(order)
                msg.leader_epoch, msg.store_id = epoch, store_id
                await context.write(msg)
        except (asyncio.CancelledError, grpc.RpcError, ConnectionError):
            pass
        finally:
            reader.cancel()
            self.engine.disconnect(session)

    async def _read(self, context: grpc.aio.ServicerContext, session: Session) -> None:
        try:
            while True:
                msg = await context.read()
                if msg is grpc.aio.EOF:
                    break
                kind = msg.WhichOneof("kind")
                if kind == "heartbeat":
                    raw = health_from_pb(msg.heartbeat.health)
                    health = validate.health(raw)
                    self.engine.heartbeat(session, health)
                    self.wire.put_health(session.info.name, health,
                                         msg.heartbeat.health if health is raw else health_to_pb(health))
                    if msg.heartbeat.watch_rules:
                        statuses = validate.watch_statuses([status_from_pb(s) for s in msg.heartbeat.watch_rules])
                        self.engine.watch_rules.on_status(session, statuses, self.engine.clock())
                elif kind == "report":
                    try:
                        report = validate.report(report_from_pb(msg.report))
                    except KeyError:
                        log.warning("malformed report ignored",
                                    extra=kv(agent=session.info.name, host=session.info.name))
                        continue
                    self.engine.report(session, report)
        except (grpc.RpcError, asyncio.CancelledError, ConnectionError):
            pass
        except Exception:
            log.exception("agent stream reader failed", extra=kv(agent=session.info.name, host=session.info.name))
        finally:
            self.engine.disconnect(session)

    async def SubmitJob(self, request: cpb.SubmitJobRequest, context: grpc.aio.ServicerContext
                        ) -> types_pb2.Job:
        rid = request.request_id
        # A retry of a submit already committed? Asked before _lead: nothing may await between the leadership
        # check and the write, or a step-down in between would let a follower's write through the fence.
        made = await self.requests.made(rid, requests.JOB)
        gen = await self._lead(context)
        if made:
            return job_to_pb(await self.engine.get_async(made[0]))
        src, (dst,) = _endpoints(request.source, [request.destination])
        options = validate.options(options_from_request(request.options))
        with self.requests.making(rid, requests.JOB):
            with self.engine.store.together("submit_job"):
                job = self.engine.submit(src, dst, options)
                self.requests.remember(rid, requests.JOB, [job.id], self.engine.clock())
            await self._commit(gen)  # the job id is handed out once the job is committed
        return job_to_pb(job)

    async def SubmitFanout(self, request: cpb.SubmitFanoutRequest, context: grpc.aio.ServicerContext
                           ) -> cpb.ListJobsResponse:
        rid = request.request_id
        made = await self.requests.made(rid, requests.JOB)
        gen = await self._lead(context)
        if made:
            return cpb.ListJobsResponse(jobs=[job_to_pb(await self.engine.get_async(i)) for i in made])
        src, dsts = _endpoints(request.source, request.destinations)
        options = validate.several(validate.options(options_from_request(request.options)), "a fan-out")
        with self.requests.making(rid, requests.JOB):
            with self.engine.store.together("submit_fanout"):
                jobs = self.engine.submit_fanout(src, dsts, options)
                self.requests.remember(rid, requests.JOB, [j.id for j in jobs], self.engine.clock())
            await self._commit(gen)
        return cpb.ListJobsResponse(jobs=[job_to_pb(j) for j in jobs])

    async def GetJob(self, request: cpb.JobRef, context: grpc.aio.ServicerContext) -> types_pb2.Job:
        return job_to_pb(await self.engine.get_async(request.id))

    async def ListJobs(self, request: cpb.ListJobsRequest, context: grpc.aio.ServicerContext
                       ) -> cpb.ListJobsResponse:
        states = states_from_request(request.states)
        jobs = await self.engine.list_jobs_async(states, request.limit, request.group_id)
        return cpb.ListJobsResponse(jobs=[job_to_pb(j) for j in jobs])

    async def CancelJob(self, request: cpb.JobRef, context: grpc.aio.ServicerContext) -> types_pb2.Job:
        gen = await self._lead(context)
        job = await self.engine.cancel_async(request.id)
        await self._commit(gen)
        return job_to_pb(job)

    async def WatchJob(self, request: cpb.JobRef, context: grpc.aio.ServicerContext  # type: ignore[override]
                       ) -> AsyncIterator[types_pb2.Job]:
        async for job in self.engine.watch(request.id):
            yield job_to_pb(job)

    async def ExplainJob(self, request: cpb.JobRef, context: grpc.aio.ServicerContext) -> cpb.ExplainResponse:
        decisions = [cpb.Decision(at=at, kind=kind, reason=reason) for at, kind, reason in
                     await self.engine.explain(request.id)]
        return cpb.ExplainResponse(job_id=request.id, decisions=decisions)

    async def ListAgents(self, request: cpb.ListAgentsRequest, context: grpc.aio.ServicerContext
                         ) -> cpb.ListAgentsResponse:
        out = cpb.ListAgentsResponse()
        if not self.engine.leading:
            out.agents.extend(agent_status_to_pb(a) for a in await self._stored_agents([]))  # type: ignore[misc]
            return out
        await self.wire.fill(self.engine.agent_names(), self.engine.statuses, out.agents)
        return out

    async def GetAgentHealth(self, request: cpb.AgentHealthRequest, context: grpc.aio.ServicerContext
                             ) -> cpb.AgentHealthResponse:
        out = cpb.AgentHealthResponse()
        history = validate.history(request.history)
        names = validate.host_names(list(request.names))
        if not self.engine.leading:
            out.agents.extend(agent_status_to_pb(a) for a in await self._stored_agents(names))  # type: ignore[misc]
            return out
        await self.wire.fill(self.engine.agent_names(names or None),
                             lambda names: self.engine.statuses(names, history), out.agents)
        return out

    async def RemoveAgent(self, request: cpb.AgentRef, context: grpc.aio.ServicerContext) -> cpb.AgentStatus:
        gen = await self._lead(context)
        status = self.engine.remove_agent(validate.host_name(request.name))
        self.wire.forget(request.name)
        await self._commit(gen)
        log.info("agent removed by the operator", extra=kv(agent=request.name, host=request.name, peer=context.peer()))
        return agent_status_to_pb(status)  # type: ignore[return-value]

    async def _stored_agents(self, names: list[str]) -> list[AgentStatus]:
        return await follower.agents(self.engine.store, names, self.engine.clock(), self.engine.config.offline_after)

    # -- watch rules --------------------------------------------------------------------------------
    async def CreateWatchRule(self, request: spb.CreateWatchRuleRequest, context: grpc.aio.ServicerContext
                              ) -> spb.WatchRule:
        rid = request.request_id
        made = await self.requests.made(rid, requests.WATCH_RULE)
        gen = await self._lead(context)
        if made:
            return rule_to_pb(self.engine.watch_rules.view(made[0], self.engine.clock()))
        src, dsts = _endpoints(request.source, request.destinations)
        options = validate.several(validate.options(options_from_request(request.options)), "a watch rule")
        with self.requests.making(rid, requests.WATCH_RULE):
            with self.engine.store.together("create_watch_rule"):
                rule = self.engine.watch_rules.create(src, dsts, options, request.window, request.quiet,
                                                self.engine.clock())
                self.requests.remember(rid, requests.WATCH_RULE, [rule.id], self.engine.clock())
            self.engine.wake()
            await self._commit(gen)  # the rule id is handed out once the rule is committed
        return rule_to_pb(rule)

    async def ListWatchRules(self, request: spb.ListWatchRulesRequest, context: grpc.aio.ServicerContext
                        ) -> spb.ListWatchRulesResponse:
        if not self.engine.leading:
            return spb.ListWatchRulesResponse(rules=[rule_to_pb(r) for r in await follower.rules(self.engine.store)])
        rules = self.engine.watch_rules.list_rules(self.engine.clock())
        return spb.ListWatchRulesResponse(rules=[rule_to_pb(r) for r in rules])

    async def PauseWatchRule(self, request: spb.WatchRef, context: grpc.aio.ServicerContext) -> spb.WatchRule:
        gen = await self._lead(context)
        rule = self.engine.watch_rules.pause(request.id, self.engine.clock())
        await self._commit(gen)
        return rule_to_pb(rule)

    async def ResumeWatchRule(self, request: spb.WatchRef, context: grpc.aio.ServicerContext) -> spb.WatchRule:
        gen = await self._lead(context)
        rule = self.engine.watch_rules.resume(request.id, self.engine.clock())
        self.engine.wake()
        await self._commit(gen)
        return rule_to_pb(rule)

    async def RemoveWatchRule(self, request: spb.WatchRef, context: grpc.aio.ServicerContext) -> spb.WatchRule:
        gen = await self._lead(context)
        rule = self.engine.watch_rules.remove(request.id, self.engine.clock())
        await self._commit(gen)
        return rule_to_pb(rule)

    # -- schedules ----------------------------------------------------------------------------------
    async def CreateSchedule(self, request: schpb.CreateScheduleRequest, context: grpc.aio.ServicerContext
                             ) -> schpb.Schedule:
        rid = request.request_id
        made = await self.requests.made(rid, requests.SCHEDULE)
        gen = await self._lead(context)
        if made:
            return schedule_to_pb(self.engine.schedules.get(made[0]))
        src, (dst,) = _endpoints(request.source, [request.destination])
        options = validate.options(options_from_request(request.options))  # SubmitJob's checks, then the job's
        with self.requests.making(rid, requests.SCHEDULE):
            with self.engine.store.together("create_schedule"):
                s = self.engine.schedules.add(src, dst, options, request.cron, request.every, request.tz)
                self.requests.remember(rid, requests.SCHEDULE, [s.id], self.engine.clock())
            await self._commit(gen)  # the id is handed out once the schedule is committed
        return schedule_to_pb(s)

    async def ListSchedules(self, request: schpb.ListSchedulesRequest, context: grpc.aio.ServicerContext
                            ) -> schpb.ListSchedulesResponse:
        return schpb.ListSchedulesResponse(schedules=[schedule_to_pb(s) for s in await self.engine.schedules.listed()])

    async def PauseSchedule(self, request: schpb.ScheduleRef, context: grpc.aio.ServicerContext) -> schpb.Schedule:
        gen = await self._lead(context)
        s = self.engine.schedules.pause(request.id)
        await self._commit(gen)
        return schedule_to_pb(s)

    async def ResumeSchedule(self, request: schpb.ScheduleRef, context: grpc.aio.ServicerContext) -> schpb.Schedule:
        gen = await self._lead(context)
        s = self.engine.schedules.resume(request.id)
        await self._commit(gen)
        return schedule_to_pb(s)

    async def RemoveSchedule(self, request: schpb.ScheduleRef, context: grpc.aio.ServicerContext) -> schpb.Schedule:
        gen = await self._lead(context)
        s = self.engine.schedules.remove(request.id)
        await self._commit(gen)
        return schedule_to_pb(s)
