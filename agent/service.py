"""The Agent gRPC service: health and identity, answered directly by each agent."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from zcrepl.core.types import AgentInfo, HostHealth
from zcrepl.proto import agent_pb2, agent_pb2_grpc, types_pb2
from zcrepl.proto.convert import agent_info_to_pb, health_to_pb

SERVICE_NAME = agent_pb2.DESCRIPTOR.services_by_name["Agent"].full_name


class AgentService(agent_pb2_grpc.AgentServicer):
    def __init__(self, health: Callable[[], HostHealth], info: Callable[[], AgentInfo]) -> None:
        self._health = health
        self._info = info

    def GetHealth(self, request: agent_pb2.GetHealthRequest, context: grpc.ServicerContext
                  ) -> types_pb2.HostHealth:
        return health_to_pb(self._health())

    def GetInfo(self, request: agent_pb2.GetInfoRequest, context: grpc.ServicerContext) -> types_pb2.AgentInfo:
        return agent_info_to_pb(self._info())
