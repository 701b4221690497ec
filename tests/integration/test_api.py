"""Read commands and the standard gRPC services, through stock clients."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from zchelpers import Cluster, wait_for

from zcrepl.core import pki
from zcrepl.proto import agent_pb2, agent_pb2_grpc
from zcrepl.proto.channels import channel


def test_agents_health_and_jobs_json(cluster: Cluster, tmp_path: Path) -> None:
    rc, out, err = cluster.ctl("agents", "--json")
    assert rc == 0, err
    agents = json.loads(out)
    assert [a["name"] for a in agents] == ["hostA", "hostB"]
    assert all(a["online"] is True for a in agents)
    assert agents[0]["exports"] == [str(tmp_path / "a")]

    def sampled() -> dict | None:  # type: ignore[type-arg]
        _, out, _ = cluster.ctl("health", "hostA", "--json")
        doc = json.loads(out)[0]
        return doc if doc["health"] and doc["health"]["mem_total"] else None

    h = wait_for(sampled, 10, interval=0.2, what="a health sample")["health"]
    assert h["cpu_count"] >= 1 and 0 <= h["cpu_percent"] <= 100
    assert h["exports"][0]["path"] == str(tmp_path / "a") and h["exports"][0]["total"] > 0
    for key in ("load1", "mem_available", "disk_read_bps", "disk_write_bps", "net_recv_bps", "net_sent_bps"):
        assert key in h
    assert h["transfer_bps"] == 0.0 and h["active_transfers"] == 0
    assert h["inotify_watches_max"] > 0 and 0 <= h["inotify_watches_used"] <= h["inotify_watches_max"]
    disks = {d["device"] for d in h["disks"]}
    assert h["exports"][0]["device"] in disks | {""}
    assert h["data_nic"] == "lo"  # the agents' data ports listen on 127.0.0.1

    hist = wait_for(lambda: len((d := json.loads(cluster.ctl("health", "hostB", "--json", "--history", "3")[1])[0])
                                ["history"]) == 3 and d, 10, interval=0.3, what="three samples of history")
    times = [h["sampled_at"] for h in hist["history"]]
    assert times == sorted(times) and len(set(times)) == 3
    assert hist["history"][-1]["cpu_count"] >= 1

    rc, out, err = cluster.ctl("health", "nosuchhost")
    assert rc == 2 and "unknown host 'nosuchhost'" in err

    rc, out, _ = cluster.ctl("health")
    assert rc == 0 and "hostA" in out and "hostB" in out and "memory" in out
    assert "inotify watches" in out and " free (" in out and "in use by this user" in out
    assert "0 active, 0 B/s" in out
    rc, out, _ = cluster.ctl("agents")
    assert rc == 0 and "online" in out

    rc, out, _ = cluster.ctl("jobs", "--json")
    assert rc == 0 and json.loads(out) == []
    rc, out, err = cluster.ctl("job", "12345", "--json")
    assert rc == 2 and "no job 12345" in err


def test_offline_agent_and_queued_job_are_visible(cluster: Cluster, tmp_path: Path) -> None:
    cluster.daemons["hostB"].stop()
    wait_for(lambda: not cluster.agents_online("hostB"), 20, what="hostB offline")
    (tmp_path / "a" / "s").mkdir(parents=True)
    rc, out, _ = cluster.ctl("replicate", "--detach", f"hostA:{tmp_path}/a/s", f"hostB:{tmp_path}/b/d")
    assert rc == 0 and "job 1 queued" in out
    wait_for(lambda: "offline" in cluster.job(1)["wait_reason"], 10, what="a wait reason")
    rc, out, _ = cluster.ctl("jobs")
    assert rc == 0 and "hostB is offline" in out
    rc, out, _ = cluster.ctl("cancel", "1")
    assert rc == 0 and cluster.job(1)["state"] == "cancelled"


def _check_standard_services(target: str, service: str, trust: Any, server_name: str) -> None:
    with channel(target, trust, server_name) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        for name in ("", service):
            resp = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        responses = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                              timeout=5)
        names = {s.name for r in responses for s in r.list_services_response.service}
        assert {service, "grpc.health.v1.Health"} <= names


def test_standard_health_and_reflection_on_both_daemons(cluster: Cluster) -> None:
    reader = cluster.pki.trust("operator", "reader", "read")
    _check_standard_services(cluster.controller_addr, "zcrepl.v1.Controller", reader, pki.CONTROLLER_DNS)
    agent_addr = cluster.daemons["hostA"].ready["grpc"]
    _check_standard_services(agent_addr, "zcrepl.v1.Agent", reader, pki.AGENT_DNS)
    with channel(agent_addr, reader, pki.AGENT_DNS) as ch:
        stub = agent_pb2_grpc.AgentStub(ch)
        info = stub.GetInfo(agent_pb2.GetInfoRequest(), timeout=5)
        assert info.name == "hostA" and info.data_address == cluster.daemons["hostA"].ready["data"]
        assert stub.GetHealth(agent_pb2.GetHealthRequest(), timeout=5).cpu_count >= 1


def test_explain_tells_why_a_job_waited_failed_and_ran(cluster: Cluster, tmp_path: Path) -> None:
    cluster.daemons["hostB"].stop()
    wait_for(lambda: not cluster.agents_online("hostB"), 20, what="hostB offline")
    (tmp_path / "a" / "s").mkdir(parents=True)
    (tmp_path / "a" / "s" / "f").write_bytes(b"data")
    rc, out, _ = cluster.ctl("replicate", "--detach", "--json", f"hostA:{tmp_path}/a/s", f"hostB:{tmp_path}/b/d")
    job_id = json.loads(out)["id"]
    wait_for(lambda: cluster.job(job_id)["wait_reason"], 10, what="a wait reason")
    cluster.daemons["hostB"].start()
    wait_for(lambda: cluster.job(job_id)["state"] == "done", 30, what="the job to finish")
    rc, out, err = cluster.ctl("explain", str(job_id), "--json")
    assert rc == 0, err
    history = json.loads(out)
    kinds = [d["kind"] for d in history]
    assert kinds[0] == "wait" and "hostB is offline" in history[0]["reason"]
    assert "start" in kinds and kinds[-1] == "done"
    assert any("streams" in d["reason"] for d in history if d["kind"] == "start")
    rc, out, _ = cluster.ctl("explain", str(job_id))
    assert rc == 0 and "hostB is offline" in out
    assert cluster.ctl("explain", "999")[0] == 2
