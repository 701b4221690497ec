"""The agent's own gRPC API (health, identity, snapshot listings, grpc.health.v1, reflection) on an asyncio server
of its own.

An asyncio server, not a thread pool: a caller that opens streams and leaves them idle (a reflection or
health Watch stream) costs a little memory, never a worker thread, so it cannot starve the other callers.
The number of calls in flight is bounded all the same (``MAX_RPCS``: past it calls fail at once with
RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import grpc

from zcrepl.core.snapshots import SnapshotEntry
from zcrepl.core.trust import Trust
from zcrepl.core.types import AgentInfo, HostHealth
from zcrepl.proto import agent_pb2, agent_pb2_grpc, types_pb2
from zcrepl.proto.auth import AuthInterceptor
from zcrepl.proto.channels import KEEPALIVE_SERVER, add_health_and_reflection_aio, bind
from zcrepl.proto.convert import agent_info_to_pb, health_to_pb
from zcrepl.proto.healthport import HealthPort
from zcrepl.proto.servererrors import ErrorInterceptor

SERVICE_NAME = agent_pb2.DESCRIPTOR.services_by_name["Agent"].full_name
MAX_RPCS = 256


class AgentService(agent_pb2_grpc.AgentServicer):
    def __init__(self, health: Callable[[], HostHealth], info: Callable[[], AgentInfo],
                 snapshots: Callable[[bytes], list[SnapshotEntry]]) -> None:
        """``snapshots``: a snapshots directory's listing (blocking: it reads the directory), confined to the
        exports; InvalidPath for a path it may not or cannot list."""
        self._health = health
        self._info = info
        self._snapshots = snapshots

    async def GetHealth(self, request: agent_pb2.GetHealthRequest, context: grpc.aio.ServicerContext
                        ) -> types_pb2.HostHealth:
        return health_to_pb(self._health())

    async def GetInfo(self, request: agent_pb2.GetInfoRequest, context: grpc.aio.ServicerContext
                      ) -> types_pb2.AgentInfo:
        return agent_info_to_pb(self._info())

    async def ListSnapshots(self, request: agent_pb2.ListSnapshotsRequest, context: grpc.aio.ServicerContext
                            ) -> agent_pb2.ListSnapshotsResponse:
        # Off the API's loop: a directory of thousands of snapshots must not hold up health reads.
        entries = await asyncio.to_thread(self._snapshots, request.path)
        return agent_pb2.ListSnapshotsResponse(snapshots=[
            agent_pb2.SnapshotEntry(name=e.name, in_progress=e.in_progress, writing=e.writing) for e in entries])


class ApiServer:
    """``start(listen)`` binds (port 0 allowed) and returns the bound port; ``stop()`` ends it.

    With ``health_listen`` it also serves the plaintext health-only port (see proto/healthport.py) on the
    same loop; its bound address is then ``health_address``.
    """

    def __init__(self, service: AgentService, trust: Trust | None) -> None:
        self._service = service
        self._trust = trust
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="zc-agent-api", daemon=True)
        self._server: grpc.aio.Server | None = None
        self._health: HealthPort | None = None
        self.health_address = ""

    def start(self, listen: str, health_listen: str = "") -> int:
        self._thread.start()
        return asyncio.run_coroutine_threadsafe(self._start(listen, health_listen), self._loop).result(30)

    async def _start(self, listen: str, health_listen: str) -> int:
        interceptors: list[grpc.aio.ServerInterceptor] = [ErrorInterceptor()]
        if self._trust is not None:
            interceptors.insert(0, AuthInterceptor(self._trust))
        self._server = grpc.aio.server(interceptors=interceptors, options=KEEPALIVE_SERVER,
                                       maximum_concurrent_rpcs=MAX_RPCS)
        agent_pb2_grpc.add_AgentServicer_to_server(self._service, self._server)
        await add_health_and_reflection_aio(self._server, [SERVICE_NAME])
        port = bind(self._server, listen, self._trust)
        await self._server.start()
        if health_listen:
            self._health = HealthPort([SERVICE_NAME])
            self.health_address = await self._health.start(health_listen)
        return port

    def stop_health(self) -> None:
        """NOT_SERVING on the health port, then close it: the first step of a stop, so probes see it early."""
        if self._health is not None and self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._health.stop(), self._loop).result(5)
            self._health = None

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self.stop_health()
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._server.stop(grace=2), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
