"""Construction of gRPC servers and channels with the house settings (keepalive, limits, TLS, health, reflection).

With a ``Trust`` every channel and port is mutual TLS: servers always require and verify a client certificate
from the cluster CA, and clients verify the server against the CA and the role name it must carry
(``controller.zcrepl`` / ``agent.zcrepl``), whatever address they dialled. Without one (``--insecure``) they are
plaintext.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grpc

from zcrepl.core.trust import Material, Trust
from zcrepl.core.wellknown import CONTROLLER_DNS

# Client pings every 20 s so a dead peer is noticed without traffic; the server must permit it.
KEEPALIVE_CLIENT = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
# Bounds for strangers: messages, concurrent streams per connection, and metadata size.
MAX_MESSAGE = 8 << 20  # what a server accepts from a caller
MAX_ANSWER = 64 << 20  # what a client accepts from the controller (ListAgents of 10,000 agents is ~6 MiB)
KEEPALIVE_SERVER = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_concurrent_streams", 64),
    ("grpc.max_metadata_size", 16 << 10),
    ("grpc.so_reuseport", 0),
]


def channel(target: str, trust: Trust | None = None, server_name: str = CONTROLLER_DNS,
            options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    """A channel to ``target``; mutual TLS when ``trust`` is given (the server must prove ``server_name``)."""
    # Later options win (dict order), so a caller can raise the answer size it accepts.
    opts = list(dict([*KEEPALIVE_CLIENT, ("grpc.max_receive_message_length", MAX_ANSWER), *options]).items())
    if trust is None:
        return grpc.insecure_channel(target, options=opts)
    m = trust.material
    creds = grpc.ssl_channel_credentials(m.ca_pem, m.key_pem, m.cert_pem)
    return grpc.secure_channel(target, creds, options=[*opts, ("grpc.ssl_target_name_override", server_name)])


def server_credentials(trust: Trust) -> grpc.ServerCredentials:
    """Mutual TLS that picks up renewed certificates and keys for every new handshake (see core/trust.py)."""
    return _reloading(trust, lambda m: grpc.ssl_server_certificate_configuration(
        [(m.key_pem, m.cert_pem)], root_certificates=m.ca_pem), client_auth=True)


def enroll_credentials(trust: Trust) -> grpc.ServerCredentials:
    """Server-authenticated TLS for the enrolment port: agents there have no certificate yet."""
    return _reloading(trust, lambda m: grpc.ssl_server_certificate_configuration([(m.key_pem, m.cert_pem)]),
                      client_auth=False)


def _reloading(trust: Trust, config: Callable[[Material], Any], *, client_auth: bool) -> grpc.ServerCredentials:
    # gRPC asks the fetcher before each handshake; it answers None ("unchanged") until a reload happened.
    seen = [trust.generation]

    def fetch() -> Any:
        trust.refresh()
        if trust.generation == seen[0]:
            return None
        seen[0] = trust.generation
        return config(trust.material)

    return grpc.dynamic_ssl_server_credentials(config(trust.material), fetch,
                                               require_client_authentication=client_auth)


async def add_health_and_reflection_aio(server: grpc.aio.Server, service_names: Sequence[str]) -> Any:
    """Standard grpc.health.v1 (overall and per service) plus server reflection, on a grpc.aio server."""
    # Imported here: clients (zc-ctl above all) build channels with this module and need neither.
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    hs = health.aio.HealthServicer()
    for name in ("", *service_names):
        await hs.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    _reflection(server, service_names)
    return hs


def _reflection(server: grpc.Server | grpc.aio.Server, service_names: Sequence[str]) -> None:
    from grpc_health.v1 import health
    from grpc_reflection.v1alpha import reflection

    names = (*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)


def bind(server: grpc.Server | grpc.aio.Server, address: str, trust: Trust | None = None) -> int:
    """Bind ``HOST:PORT`` (port 0 picks a free one), mutual TLS with ``trust``; returns the bound port."""
    port = server.add_secure_port(address, server_credentials(trust)) if trust else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}: the address is in use or not local")
    return port

