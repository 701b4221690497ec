"""Construction of gRPC servers and channels with the house settings (keepalive, health, reflection)."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

# Client pings every 20 s so a dead peer is noticed without traffic; the server must permit it.
KEEPALIVE_CLIENT = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
KEEPALIVE_SERVER = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.max_receive_message_length", 8 << 20),
    ("grpc.so_reuseport", 0),
]


def channel(target: str) -> grpc.Channel:
    return grpc.insecure_channel(target, options=KEEPALIVE_CLIENT)


def sync_server(workers: int = 8) -> grpc.Server:
    return grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="zc-grpc"),
                       options=KEEPALIVE_SERVER)


def add_health_and_reflection(server: grpc.Server, service_names: Sequence[str]) -> health.HealthServicer:
    """Standard grpc.health.v1 (overall and per service) plus server reflection, on a threaded server."""
    hs = health.HealthServicer(experimental_non_blocking=True)
    for name in ("", *service_names):
        hs.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    _reflection(server, service_names)
    return hs


async def add_health_and_reflection_aio(server: grpc.aio.Server, service_names: Sequence[str]) -> Any:
    """The same on a grpc.aio server, whose health servicer is async."""
    hs = health.aio.HealthServicer()
    for name in ("", *service_names):
        await hs.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    _reflection(server, service_names)
    return hs


def _reflection(server: grpc.Server | grpc.aio.Server, service_names: Sequence[str]) -> None:
    names = (*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)


def bind(server: grpc.Server | grpc.aio.Server, address: str) -> int:
    """Bind ``HOST:PORT`` (port 0 picks a free one) and return the bound port."""
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}: the address is in use or not local")
    return port

