"""The plaintext health-only port (--health-listen) that Kubernetes' gRPC probes use, on both real daemons.

A real grpc.health.v1 client without TLS, as the kubelet dials: the daemons' own ports refuse it (mutual TLS),
the health port answers SERVING for the overall status and each registered service, carries no other service,
and turns NOT_SERVING when the daemon stops.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from zchelpers import ClusterPKI

from zcrepl.agent.api import SERVICE_NAME as AGENT_SERVICE
from zcrepl.agent.daemon import Agent
from zcrepl.controller.daemon import Controller
from zcrepl.controller.service import SERVICE_NAME as CONTROLLER_SERVICE
from zcrepl.core.config import AgentConfig, ControllerConfig, load_config
from zcrepl.core.errors import ConfigError

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def check(address: str, service: str = "") -> Any:
    with grpc.insecure_channel(address) as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> ClusterPKI:
    return ClusterPKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def controller(pki: ClusterPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controller]:
    cert, key = pki.issue("controller", "controller")
    cfg = load_config(ControllerConfig, None, {
        "listen": "127.0.0.1:0", "enroll_listen": "127.0.0.1:0", "health_listen": "127.0.0.1:0",
        "state_dir": str(tmp_path_factory.mktemp("state")), "ca": pki.ca, "cert": cert, "key": key}, environ={})
    with Controller(cfg) as c:
        yield c


def test_controller_health_port_answers_a_plaintext_probe(controller: Controller) -> None:
    assert controller.health_address.startswith("127.0.0.1:")
    assert check(controller.health_address) == SERVING
    assert check(controller.health_address, CONTROLLER_SERVICE) == SERVING
    with pytest.raises(grpc.RpcError) as err:
        check(controller.health_address, "no.such.Service")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_the_mutual_tls_port_refuses_the_same_probe(controller: Controller) -> None:
    # Why the health port exists: kubelet's gRPC probe speaks neither TLS nor client certificates.
    with pytest.raises(grpc.RpcError) as err:
        check(controller.address)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_health_port_serves_nothing_but_health(controller: Controller) -> None:
    with grpc.insecure_channel(controller.health_address) as ch:
        list_agents = ch.unary_unary(f"/{CONTROLLER_SERVICE}/ListAgents")
        with pytest.raises(grpc.RpcError) as err:
            list_agents(b"", timeout=5)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        reflect = ch.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
        with pytest.raises(grpc.RpcError) as err:
            list(reflect(iter([b""]), timeout=5))
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_agent_health_port_goes_not_serving_when_it_stops(pki: ClusterPKI, controller: Controller,
                                                          tmp_path: Path) -> None:
    cert, key = pki.issue("agent", "hostA")
    (tmp_path / "export").mkdir()
    cfg = load_config(AgentConfig, None, {
        "name": "hostA", "controller": controller.address, "exports": [str(tmp_path / "export")],
        "listen": "127.0.0.1:0", "data_listen": "127.0.0.1:0", "health_listen": "127.0.0.1:0",
        "state_dir": str(tmp_path / "state"), "ca": pki.ca, "cert": cert, "key": key}, environ={})
    agent = Agent(cfg).start()
    statuses: list[Any] = []
    try:
        address = agent.health_address
        assert check(address) == SERVING and check(address, AGENT_SERVICE) == SERVING
        with grpc.insecure_channel(address) as ch:
            watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=""), timeout=20)
            assert next(watch).status == SERVING
            agent.stop()
            try:
                statuses.extend(r.status for r in watch)
            except grpc.RpcError:
                pass  # the stream ends with the server; what it said before that is what counts
    finally:
        agent.stop()
    assert statuses[:1] == [NOT_SERVING]


def test_health_port_that_is_taken_is_a_clear_error(pki: ClusterPKI, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        cert, key = pki.issue("controller", "controller")
        cfg = load_config(ControllerConfig, None, {
            "listen": "127.0.0.1:0", "enroll_listen": "127.0.0.1:0", "health_listen": busy,
            "state_dir": str(tmp_path), "ca": pki.ca, "cert": cert, "key": key}, environ={})
        with pytest.raises(OSError, match=f"cannot serve health checks on {busy}: .*choose another health_listen"):
            Controller(cfg).start()


@pytest.mark.parametrize("cls", [ControllerConfig, AgentConfig])
def test_health_listen_is_off_by_default_and_checked(cls: Any, tmp_path: Path) -> None:
    base: dict[str, Any] = {"insecure": True, **({"exports": str(tmp_path)} if cls is AgentConfig else {})}
    assert load_config(cls, None, base, {}).health_listen == ""
    assert load_config(cls, None, base, {"ZC_HEALTH_LISTEN": "0.0.0.0:7424"}).health_listen == "0.0.0.0:7424"
    with pytest.raises(ConfigError, match="is not HOST:PORT"):
        load_config(cls, None, {**base, "health_listen": "7424"}, {})
