"""A plaintext port that serves grpc.health.v1 and nothing else, for probes that cannot do mutual TLS.

Kubernetes' native gRPC probe (and most load balancers' health checks) dial without TLS and without a client
certificate, so they cannot reach the daemons' mutual-TLS ports. This port answers them: Check, Watch and
List of the overall status ("") and of each service the daemon registers on its main port. It carries no
other service (no reflection either), so it tells a stranger only "serving" or "not serving".

It goes SERVING once the main port serves and NOT_SERVING as the daemon begins to stop, so a probe sees the
stop before the main port closes. Calls in flight are bounded (idle Watch streams cost memory, not threads).
"""

from __future__ import annotations

from typing import Any

import grpc

from zcrepl.core.config import split_address
from zcrepl.proto.channels import KEEPALIVE_SERVER

MAX_RPCS = 32


class HealthPort:
    """``await start(listen)`` binds (port 0 allowed) and returns the bound HOST:PORT; ``await stop()``."""

    def __init__(self, service_names: list[str]) -> None:
        self._names = ["", *service_names]
        self._server: grpc.aio.Server | None = None
        self._servicer: Any = None

    async def start(self, listen: str) -> str:
        # Imported here, like channels.add_health_and_reflection_aio: clients never need it.
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc

        host, _ = split_address(listen)
        servicer = health.aio.HealthServicer()
        server = grpc.aio.server(options=KEEPALIVE_SERVER, maximum_concurrent_rpcs=MAX_RPCS)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        try:
            port = server.add_insecure_port(listen)
        except RuntimeError:  # grpc's way of saying the bind failed
            port = 0
        if port == 0:
            await server.stop(None)
            raise OSError(f"cannot serve health checks on {listen}: the address is in use or not local; "
                          "choose another health_listen")
        await server.start()
        for name in self._names:
            await servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._server, self._servicer = server, servicer
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def stop(self) -> None:
        if self._server is None:
            return
        await self._servicer.enter_graceful_shutdown()
        await self._server.stop(grace=1)
        self._server = None
