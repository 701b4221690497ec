"""The controller validates what it is sent at its edge (issue 9, item 8): a real zc-controller process,
probed with the generated stubs the way any client could, and with zc-ctl."""

from __future__ import annotations

import json
import math
import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from zchelpers import Cluster, wait_for

from zcrepl.proto import controller_pb2 as cpb
from zcrepl.proto import controller_pb2_grpc
from zcrepl.proto import types_pb2 as tpb
from zcrepl.proto import watchrules_pb2 as spb
from zcrepl.proto.channels import channel

U64 = (1 << 64) - 1


def _channel(c: Cluster, kind: str = "operator", name: str = "admin") -> grpc.Channel:
    """The one place this file opens a raw channel to the controller: mutual TLS with a certificate of the
    cluster's CA (an admin operator's, or an agent's, which a hostile agent would hold too)."""
    return channel(c.controller_addr, c.pki.trust(kind, name))


class RawAgent:
    """An agent stream spoken by hand with a valid agent certificate for ``cert``: a Register (whatever it
    claims), then whatever heartbeats the test sends."""

    def __init__(self, c: Cluster, info: tpb.AgentInfo, cert: str = "") -> None:
        self._channel = _channel(c, "agent", cert or info.name)
        self._out: queue.Queue[cpb.AgentMessage | None] = queue.Queue()
        self._out.put(cpb.AgentMessage(register=cpb.Register(info=info)))
        self.call = controller_pb2_grpc.ControllerStub(self._channel).Connect(iter(self._out.get, None))

    def welcome(self) -> cpb.Welcome:
        return next(self.call).welcome

    def beat(self, health: tpb.HostHealth) -> None:
        self._out.put(cpb.AgentMessage(heartbeat=cpb.Heartbeat(health=health)))

    def close(self) -> None:
        self._out.put(None)
        self.call.cancel()
        self._channel.close()


def info(name: str, data: str = "127.0.0.1:7422", **kw: Any) -> tpb.AgentInfo:
    return tpb.AgentInfo(name=name, grpc_address="127.0.0.1:7421", data_address=data,
                         exports=kw.pop("exports", [b"/srv"]), **kw)


@pytest.fixture
def ctl(tmp_path: Path) -> Iterator[Cluster]:
    """A controller with no agent of its own."""
    c = Cluster(tmp_path)
    try:
        c.controller.start()
        yield c
    finally:
        c.close()


@pytest.fixture
def stub(ctl: Cluster) -> Iterator[controller_pb2_grpc.ControllerStub]:
    with _channel(ctl) as ch:
        yield controller_pb2_grpc.ControllerStub(ch)


def agent_names(c: Cluster) -> list[str]:
    rc, out, err = c.ctl("agents", "--json")
    assert rc == 0, err
    return [a["name"] for a in json.loads(out)]


@pytest.mark.parametrize(("name", "data", "needle"), [
    ("x" * 1_000_000, "127.0.0.1:7422", "1 to 253 characters"),
    ("hostB\n", "127.0.0.1:7422", "1 to 253 characters"),
    ("host\u202eB", "127.0.0.1:7422", "1 to 253 characters"),
    ("hostB ", "127.0.0.1:7422", "1 to 253 characters"),
    ("hostB", "evil\n:7422", "data address"),
    ("hostB", "0.0.0.0:7422", "unspecified"),
    ("hostB", "127.0.0.1:99999", "port from 1 to 65535"),
])
def test_hostile_registrations_are_refused_and_leave_nothing(ctl: Cluster, name: str, data: str,
                                                             needle: str) -> None:
    agent = RawAgent(ctl, info(name, data), cert="hostB")  # a real agent's certificate, a hostile Register
    try:
        with pytest.raises(grpc.RpcError) as e:
            agent.welcome()
        assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        details = e.value.details() or ""
        assert needle in details and len(details) < 500 and details.isprintable()
    finally:
        agent.close()
    assert agent_names(ctl) == []
    ctl.controller.stop()
    ctl.controller.start()
    assert agent_names(ctl) == []  # nothing was stored either


def test_absurd_health_breaks_no_response(ctl: Cluster) -> None:
    bad = RawAgent(ctl, info("bad"))
    good = RawAgent(ctl, info("good"))
    try:
        bad.welcome()
        good.welcome()
        for t in range(3):
            bad.beat(tpb.HostHealth(sampled_at=float(t), mem_total=U64, mem_available=U64, agent_rss=U64,
                                    cpu_percent=math.nan, load1=math.inf, cpu_count=2,
                                    nics=[tpb.NetIO(interface="eth\u202e0", speed_mbps=U64)]))
            good.beat(tpb.HostHealth(sampled_at=float(t), mem_total=1 << 30, cpu_count=2))

        def history() -> list[dict[str, Any]] | None:
            rc, out, err = ctl.ctl("health", "--json", "--history", "900")
            assert rc == 0, err  # one heartbeat of 2**64-1 used to fail this for everyone
            docs = json.loads(out)
            return docs if all(len(d["history"]) == 3 for d in docs) else None

        docs = {d["name"]: d for d in wait_for(history, 20, interval=0.2, what="three samples each")}
        h = docs["bad"]["health"]
        assert h["mem_total"] == h["mem_available"] == 1 << 52 and h["cpu_percent"] == 0.0
        assert h["load1"] == 1e6 and h["nics"][0]["interface"] == "eth?0"
        assert all(s["mem_total"] == 1 << 52 for s in docs["bad"]["history"])
        assert docs["good"]["health"]["mem_total"] == 1 << 30
        rc, out, _ = ctl.ctl("agents")
        assert rc == 0 and "bad" in out and "good" in out
    finally:
        bad.close()
        good.close()


def _refused(call: Any, request: Any, needle: str) -> None:
    with pytest.raises(grpc.RpcError) as e:
        call(request, timeout=10)
    assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    details = e.value.details() or ""
    assert needle in details and len(details) < 500, details


def test_requests_out_of_range_are_refused(ctl: Cluster, stub: controller_pb2_grpc.ControllerStub) -> None:
    agents = [RawAgent(ctl, info(n)) for n in ("hostA", "hostB")]
    try:
        for a in agents:
            a.welcome()
        src, dst = tpb.Endpoint(host="hostA", path=b"/srv/a"), tpb.Endpoint(host="hostB", path=b"/srv/b")

        def job(**options: Any) -> cpb.SubmitJobRequest:
            return cpb.SubmitJobRequest(source=src, destination=dst, options=tpb.JobOptions(**options))

        _refused(stub.SubmitJob, job(streams=17), "streams 17 is refused: choose 0 (automatic) to 16")
        _refused(stub.SubmitJob, job(streams=2**32 - 3), "streams 4294967293 is refused")
        _refused(stub.SubmitJob, job(bwlimit=U64), "bwlimit 18446744073709551615 is refused")
        _refused(stub.SubmitJob, job(max_attempts=10**6), "max_attempts 1000000 is refused")
        _refused(stub.SubmitJob, job(priority=9), "priority 9 is unknown")
        _refused(stub.SubmitJob, job(durability=7), "durability 7 is unknown")
        _refused(stub.SubmitJob, cpb.SubmitJobRequest(source=tpb.Endpoint(host="h" * 1_000_000, path=b"/a"),
                                                      destination=dst), "1 to 253 characters")
        _refused(stub.SubmitFanout, cpb.SubmitFanoutRequest(source=src, destinations=[dst] * 1001),
                 "at most 1000")
        _refused(stub.CreateWatchRule, spb.CreateWatchRuleRequest(source=src, destinations=[dst], window=math.nan),
                 "--window must be within")
        _refused(stub.ListJobs, cpb.ListJobsRequest(states=[42]), "job state 42 is unknown")
        _refused(stub.GetAgentHealth, cpb.AgentHealthRequest(names=["bad name"]), "agent name 'bad name'")
        _refused(stub.RemoveAgent, cpb.AgentRef(name="x\n"), "1 to 253 characters")
        assert list(stub.ListJobs(cpb.ListJobsRequest(), timeout=10).jobs) == []  # nothing was queued

        ok = stub.SubmitJob(job(streams=16, max_attempts=100, bwlimit=1 << 50, priority=tpb.PRIORITY_HIGH),
                            timeout=10)
        assert ok.options.streams == 16
        hist = stub.GetAgentHealth(cpb.AgentHealthRequest(history=2**32 - 1), timeout=10)
        assert [a.info.name for a in hist.agents] == ["hostA", "hostB"]
    finally:
        for a in agents:
            a.close()


@pytest.mark.parametrize(("args", "needle"), [
    (("replicate", "hostA:/a", "hostB:/b", "--streams", "-3"), "'-3' is not a number of streams"),
    (("replicate", "hostA:/a", "hostB:/b", "--streams", "17"), "'17' is not a number of streams"),
    (("replicate", "hostA:/a", "hostB:/b", "--bwlimit", "-1"), "'-1' is not a rate"),
    (("replicate", "hostA:/a", "hostB:/b", "--max-attempts", "x"), "'x' is not a number of attempts"),
    (("replicate", "--watch", "hostA:/a", "hostB:/b", "--window", "nan"), "'nan' is not a window"),
    (("job", "-5"), "'-5' is not a job id"),
    (("cancel", "99999999999999999999"), "is not a job id"),
    (("health", "--history", "-1"), "is not a number of samples"),
    (("health", "bad name"), "'bad name' is not an agent name"),
    (("agents", "remove", "x" * 300), "is not an agent name"),
])
def test_zc_ctl_refuses_bad_numbers_in_one_sentence(ctl: Cluster, args: tuple[str, ...], needle: str) -> None:
    rc, out, err = ctl.ctl(*args)
    assert rc == 2 and out == ""
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_zc_ctl_agents_remove_forgets_an_offline_agent(ctl: Cluster) -> None:
    online = RawAgent(ctl, info("hostA"))
    gone = RawAgent(ctl, info("ghost"))
    try:
        online.welcome()
        gone.welcome()
        gone.close()
        wait_for(lambda: not next(a for a in json.loads(ctl.ctl("agents", "--json")[1]) if a["name"] == "ghost")
                 ["online"], 20, interval=0.2, what="ghost offline")
        rc, _, err = ctl.ctl("agents", "remove", "hostA")
        assert rc == 1 and "hostA is online: removing it is refused; stop its zc-agent first" in err
        rc, _, err = ctl.ctl("agents", "remove", "nobody")
        assert rc == 2 and "unknown host 'nobody'" in err
        rc, out, err = ctl.ctl("agents", "remove", "ghost")
        assert rc == 0 and "agent ghost removed" in out, err
        assert agent_names(ctl) == ["hostA"]
    finally:
        online.close()
    ctl.controller.stop()
    ctl.controller.start()
    assert agent_names(ctl) == ["hostA"]  # the removal is durable
