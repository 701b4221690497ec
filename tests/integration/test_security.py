"""Mutual TLS, identities, roles, join tokens and revocation against real daemons (issue 9, findings 1-3)."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from zchelpers import Cluster, ClusterPKI, FakeAgent, make_tree, snapshot, wait_for

from zcrepl.core import pki
from zcrepl.proto import controller_pb2 as cpb
from zcrepl.proto import controller_pb2_grpc, types_pb2
from zcrepl.proto import watchrules_pb2 as spb
from zcrepl.proto.channels import channel


def _stub(cluster: Cluster, trust: object) -> controller_pb2_grpc.ControllerStub:
    return controller_pb2_grpc.ControllerStub(channel(cluster.controller_addr, trust))  # type: ignore[arg-type]


def _submit(tmp_path: Path, delete: bool = True) -> cpb.SubmitJobRequest:
    return cpb.SubmitJobRequest(source=types_pb2.Endpoint(host="hostA", path=os.fsencode(tmp_path / "a")),
                                destination=types_pb2.Endpoint(host="hostB", path=os.fsencode(tmp_path / "b")),
                                options=types_pb2.JobOptions(delete=delete))


def _code(fn: object, *args: object) -> tuple[grpc.StatusCode, str]:
    try:
        fn(*args, timeout=10)  # type: ignore[operator]
    except grpc.RpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


def test_strangers_cannot_reach_the_api(cluster: Cluster, tmp_path: Path) -> None:
    """Finding 1: no credential, a certificate from another CA, or plaintext: nothing gets through."""
    (tmp_path / "b" / "keep").write_bytes(b"precious")
    stranger_ca = ClusterPKI(tmp_path / "stranger")
    for ch in (grpc.insecure_channel(cluster.controller_addr),
               grpc.secure_channel(cluster.controller_addr, grpc.ssl_channel_credentials(
                   Path(cluster.pki.ca).read_bytes()), options=[("grpc.ssl_target_name_override",
                                                                 pki.CONTROLLER_DNS)]),
               channel(cluster.controller_addr, stranger_ca.trust())):
        with ch:
            stub = controller_pb2_grpc.ControllerStub(ch)
            code, _ = _code(stub.SubmitJob, _submit(tmp_path))
            assert code is grpc.StatusCode.UNAVAILABLE
            assert _code(stub.CancelJob, cpb.JobRef(id=1))[0] is grpc.StatusCode.UNAVAILABLE
            assert _code(stub.RemoveWatchRule, spb.WatchRef(id=1))[0] is grpc.StatusCode.UNAVAILABLE
    assert (tmp_path / "b" / "keep").read_bytes() == b"precious"
    rc, out, _ = cluster.ctl("jobs", "--json")
    assert rc == 0 and json.loads(out) == []
    # zc-ctl with a certificate of another CA explains what is wrong with its files.
    env = {**os.environ, **stranger_ca.env(), "ZC_CA": cluster.pki.ca}
    p = subprocess.run([sys.executable, "-m", "zcrepl.cli.ctl", "--controller", cluster.controller_addr,
                        "agents"], capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 2 and "admin.pem is not issued by the CA in" in p.stderr, p.stderr


def test_roles_decide_what_a_certificate_may_do(cluster: Cluster, tmp_path: Path) -> None:
    (tmp_path / "b" / "keep").write_bytes(b"precious")
    reader = _stub(cluster, cluster.pki.trust("operator", "rita", "read"))
    code, why = _code(reader.SubmitJob, _submit(tmp_path))
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert why == "rita has the read role; SubmitJob needs operator (ask an admin for a certificate)"
    assert _code(reader.CancelJob, cpb.JobRef(id=1))[0] is grpc.StatusCode.PERMISSION_DENIED
    assert _code(reader.RemoveWatchRule, spb.WatchRef(id=1))[0] is grpc.StatusCode.PERMISSION_DENIED
    assert _code(reader.ListAgents, cpb.ListAgentsRequest())[0] is grpc.StatusCode.OK
    agent = _stub(cluster, cluster.pki.trust("agent", "hostA"))
    code, why = _code(agent.SubmitJob, _submit(tmp_path))
    assert code is grpc.StatusCode.PERMISSION_DENIED and "agent hostA may not call SubmitJob" in why
    assert _code(agent.ListAgents, cpb.ListAgentsRequest())[0] is grpc.StatusCode.PERMISSION_DENIED
    assert (tmp_path / "b" / "keep").read_bytes() == b"precious"

    env = {**os.environ, **cluster.pki.env("rita", "read")}
    p = subprocess.run([sys.executable, "-m", "zcrepl.cli.ctl", "--controller", cluster.controller_addr,
                        "replicate", f"hostA:{tmp_path}/a", f"hostB:{tmp_path}/b/x"], capture_output=True,
                       text=True, timeout=60, env=env)
    assert p.returncode == 5, p.stderr
    assert p.stderr.strip() == ("zc-ctl: permission denied: rita has the read role; SubmitJob needs operator "
                                "(ask an admin for a certificate)")
    env = {**os.environ, **cluster.pki.env("olga", "operator")}
    p = subprocess.run([sys.executable, "-m", "zcrepl.cli.ctl", "--controller", cluster.controller_addr,
                        "token", "create", "--agent", "hostC"], capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 5 and "CreateJoinToken needs admin" in p.stderr
    p = subprocess.run([sys.executable, "-m", "zcrepl.cli.ctl", "--controller", cluster.controller_addr,
                        "replicate", f"hostA:{tmp_path}/a", f"hostB:{tmp_path}/b/x"], capture_output=True,
                       text=True, timeout=60, env=env)
    assert p.returncode == 0, p.stderr
    log = cluster.controller.log()
    assert 'method=/zcrepl.v1.Controller/SubmitJob caller="zcrepl://operator/olga?role=operator"' in log
    assert 'msg="call denied" method=/zcrepl.v1.Controller/SubmitJob caller="zcrepl://operator/rita?role=read"' in log


def test_an_agent_from_another_ca_cannot_join(cluster: Cluster, tmp_path: Path) -> None:
    """Finding 2: a stock zc-agent with its own CA never registers, so nothing can be sent to it."""
    stranger = ClusterPKI(tmp_path / "stranger")
    evil = cluster.add_agent("evil", tmp_path / "loot", tls=stranger.flags("agent", "evil"))
    evil.start()
    wait_for(lambda: "controller stream lost" in evil.log(), 20, what="the rogue agent to be refused")
    rc, out, _ = cluster.ctl("agents", "--json")
    assert "evil" not in {a["name"] for a in json.loads(out)}
    rc, _, err = cluster.ctl("replicate", f"hostA:{tmp_path}/a", f"evil:{tmp_path}/loot/x")
    assert rc == 2 and "unknown host 'evil'" in err
    assert not (tmp_path / "loot" / "x").exists()


def test_a_certificate_registers_only_its_own_name_and_never_unseats_a_live_agent(
        cluster: Cluster, tmp_path: Path) -> None:
    """Finding 3: hostA's certificate cannot register as hostB; hostB's own key cannot steal hostB's session."""
    make_tree(tmp_path / "a" / "src", files=40)
    posing = FakeAgent(cluster.controller_addr, "hostB", pki=cluster.pki, cert_name="hostA")
    try:
        with pytest.raises(grpc.RpcError) as info:
            posing.next_order("welcome", timeout=10)
        assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "this certificate is for agent hostA; it may not register as hostB" in (info.value.details() or "")
    finally:
        posing.close()
    hijackers = [FakeAgent(cluster.controller_addr, "hostB", pki=cluster.pki) for _ in range(3)]
    try:
        for h in hijackers:
            with pytest.raises(grpc.RpcError) as info:
                h.next_order("welcome", timeout=10)
            assert info.value.code() is grpc.StatusCode.ALREADY_EXISTS
            assert "hostB is already connected and heartbeating" in (info.value.details() or "")
        rc, _, err = cluster.ctl("replicate", f"hostA:{tmp_path}/a/src", f"hostB:{tmp_path}/b/dst")
        assert rc == 0, err
    finally:
        for h in hijackers:
            h.close()
    assert snapshot(tmp_path / "a" / "src") == snapshot(tmp_path / "b" / "dst")
    assert "hostB re-registered" not in cluster.controller.log()


def test_revocation_closes_sessions_and_refuses_calls_without_restart(cluster: Cluster, tmp_path: Path) -> None:
    rc, _, err = cluster.ctl("agents")
    assert rc == 0, err
    serial, total = pki.revoke(cluster.pki.dir, "hostB")  # the controller was started with --crl at that file
    assert total == 1
    wait_for(lambda: not cluster.agents_online("hostB"), 20, what="hostB's session to close")
    assert cluster.agents_online("hostA")
    wait_for(lambda: "certificate of agent hostB is revoked" in cluster.controller.log(), 20,
             what="hostB's reconnects to be refused")
    cluster.pki.issue("operator", "mallory", "admin")
    pki.revoke(cluster.pki.dir, "mallory")
    env = {**os.environ, **cluster.pki.env("mallory", "admin")}

    def refused() -> subprocess.CompletedProcess[str] | None:
        p = subprocess.run([sys.executable, "-m", "zcrepl.cli.ctl", "--controller",
                            cluster.controller_addr, "agents"], capture_output=True, text=True, timeout=60, env=env)
        return p if p.returncode != 0 else None

    p = wait_for(refused, 10, interval=0.3, what="the revoked operator to be refused")  # CRLs are read each second
    assert p.returncode == 5 and "the certificate of operator mallory (admin) is revoked" in p.stderr
    rc, out, _ = cluster.ctl("cert", "revoked")
    assert rc == 0 and str(serial) in out


def test_join_token_enrols_once_and_renewal_keeps_the_agent(cluster: Cluster, tmp_path: Path) -> None:
    rc, token, err = cluster.ctl("token", "create", "--agent", "hostC", "--ttl", "10m")
    assert rc == 0, err
    token = token.strip()
    assert token.startswith("zcj1.") and "valid until" in err
    fp = pki.pem_fingerprint(Path(cluster.pki.ca).read_bytes())
    assert fp in token

    def join(name: str, tok: str, state: str) -> subprocess.CompletedProcess[str]:
        (tmp_path / "c").mkdir(exist_ok=True)
        return subprocess.run([sys.executable, "-m", "zcrepl.agent", "--name", name, "--controller",
                               cluster.controller_addr, "--join", tok, "--state-dir", str(tmp_path / state),
                               "--export", str(tmp_path / "c"), "--listen", "127.0.0.1:0", "--data-listen",
                               "127.0.0.1:0"],
                              capture_output=True, text=True, timeout=60)

    # The wrong name is refused without spending the token; a token pinning another CA is refused first.
    p = join("hostX", token, "sx")
    assert p.returncode == 2 and "this join token is for agent hostC, not hostX" in p.stderr
    forged = token.replace(fp, "0" * 64)
    p = join("hostC", forged, "sy")
    assert p.returncode == 2 and "does not present the CA the join token pins" in p.stderr
    assert not (tmp_path / "sy" / "pki" / "agent.key").exists()

    c = cluster.add_agent("hostC", tmp_path / "c", tls=["--join", token, "--state-dir", str(tmp_path / "sc")])
    c.start()
    cluster.wait_online("hostC")
    key = tmp_path / "sc" / "pki" / "agent.key"
    assert key.stat().st_mode & 0o777 == 0o600
    cert = pki.load_cert((tmp_path / "sc" / "pki" / "agent.pem").read_bytes())
    assert pki.identity_of(cert) == pki.Identity("agent", "hostC", "", cert.serial_number,
                                                 cert.not_valid_after_utc.timestamp())
    p = join("hostC", token, "sz")  # a second use
    assert p.returncode == 2 and "already used" in p.stderr

    make_tree(tmp_path / "a" / "src", files=30)
    rc, _, err = cluster.ctl("replicate", f"hostA:{tmp_path}/a/src", f"hostC:{tmp_path}/c/dst")
    assert rc == 0, err
    # Restart without the token: the enrolled certificate is reused.
    c.stop()
    c.argv = [a for a in c.argv if a != token and a != "--join"]
    c.start()
    cluster.wait_online("hostC")
    assert snapshot(tmp_path / "a" / "src") == snapshot(tmp_path / "c" / "dst")


def test_certificates_reload_on_sighup_without_dropping_a_running_job(cluster: Cluster, tmp_path: Path) -> None:
    make_tree(tmp_path / "a" / "src", files=20, big=48 << 20)
    rc, out, err = cluster.ctl("replicate", "--detach", "--json", "--bwlimit", "8M", f"hostA:{tmp_path}/a/src",
                               f"hostB:{tmp_path}/b/dst")
    assert rc == 0, err
    job = json.loads(out)["id"]
    wait_for(lambda: cluster.job(job)["state"] == "running", 20, what="the job to run")

    def served_serial() -> int:
        ctx = ssl.create_default_context(cafile=cluster.pki.ca)
        ctx.check_hostname = False
        ctx.load_cert_chain(*cluster.pki.issue("operator", "admin", "admin"))
        ctx.set_alpn_protocols(["h2"])
        host, port = cluster.controller_addr.rsplit(":", 1)
        import socket

        with socket.create_connection((host, int(port)), 5) as raw, ctx.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
        from cryptography import x509

        assert der is not None
        return int(x509.load_der_x509_certificate(der).serial_number)

    before = served_serial()
    (cluster.pki.dir / "controller.pem").unlink()
    cluster.pki.issue("controller", "controller")  # a new key and certificate in place
    cluster.controller.send_signal(signal.SIGHUP)
    wait_for(lambda: served_serial() != before, 10, what="the new certificate to be served")
    wait_for(lambda: cluster.job(job)["state"] in ("done", "failed"), 60, what="the job to end")
    doc = cluster.job(job)
    assert doc["state"] == "done" and doc["attempts"] == 1, doc
    assert cluster.agents_online("hostA", "hostB")
    assert "TLS files reloaded" in cluster.controller.log()


def test_daemons_refuse_to_start_without_tls_material(tmp_path: Path) -> None:
    (tmp_path / "e").mkdir()
    p = subprocess.run([sys.executable, "-m", "zcrepl.controller", "--state-dir", str(tmp_path / "s"),
                        "--listen", "127.0.0.1:0"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "no TLS material" in p.stderr and "--insecure" in p.stderr
    p = subprocess.run([sys.executable, "-m", "zcrepl.agent", "--name", "h", "--export", str(tmp_path / "e"),
                        "--state-dir", str(tmp_path / "as")], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "no TLS material" in p.stderr and "--join TOKEN" in p.stderr
    p = subprocess.run([sys.executable, "-m", "zcrepl.cli.ctl", "agents"], capture_output=True, text=True,
                       timeout=60, env={k: v for k, v in os.environ.items() if not k.startswith("ZC_")})
    assert p.returncode == 2 and "no TLS material" in p.stderr


def test_insecure_mode_warns_and_binds_loopback(tmp_path: Path) -> None:
    ready = tmp_path / "c.json"
    proc = subprocess.Popen([sys.executable, "-m", "zcrepl.controller", "--insecure", "--state-dir",
                             str(tmp_path / "s"), "--ready-file", str(ready), "--listen", "127.0.0.1:0"],
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(ready.exists, 20, what="the insecure controller")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert "INSECURE: TLS is off" in err


def test_idle_streams_cannot_starve_the_agents_api(cluster: Cluster) -> None:
    """64 reflection streams left open and idle: the agent still answers at once (no thread per stream)."""
    from grpc_reflection.v1alpha import reflection_pb2_grpc

    from zcrepl.proto import agent_pb2, agent_pb2_grpc

    reader = cluster.pki.trust("operator", "rita", "read")
    target = cluster.daemons["hostA"].ready["grpc"]
    release = threading.Event()

    def idle() -> Iterator[object]:
        release.wait(60)
        return
        yield

    chans = [channel(target, reader, pki.AGENT_DNS) for _ in range(4)]
    calls = [reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(idle(), timeout=60)
             for ch in chans for _ in range(16)]
    try:
        with channel(target, reader, pki.AGENT_DNS) as ch:
            info = agent_pb2_grpc.AgentStub(ch).GetInfo(agent_pb2.GetInfoRequest(), timeout=5)
        assert info.name == "hostA"
    finally:
        release.set()
        for c in calls:
            c.cancel()
        for ch in chans:
            ch.close()


def test_oversized_messages_are_refused(cluster: Cluster, tmp_path: Path) -> None:
    admin = _stub(cluster, cluster.pki.trust())
    req = cpb.SubmitJobRequest(source=types_pb2.Endpoint(host="hostA", path=b"/" + b"x" * (9 << 20)),
                               destination=types_pb2.Endpoint(host="hostB", path=os.fsencode(tmp_path / "b")))
    assert _code(admin.SubmitJob, req)[0] is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _code(admin.ListAgents, cpb.ListAgentsRequest())[0] is grpc.StatusCode.OK


def test_enrolled_certificates_renew_and_revoke_by_name(cluster: Cluster, tmp_path: Path) -> None:
    from zcrepl.agent.identity import Renewer, agent_trust, enrolled_paths
    from zcrepl.core.config import AgentConfig
    from zcrepl.core.errors import ConfigError

    rc, token, err = cluster.ctl("token", "create", "--agent", "hostR")
    assert rc == 0, err
    (tmp_path / "r").mkdir()
    # The first controller of the agent's list is out of reach (nothing listens on 127.0.0.2): enrolment and
    # renewal go on to the next, as the agent's stream does.
    port = cluster.controller_addr.rpartition(":")[2]
    listed = f"127.0.0.2:{port},{cluster.controller_addr}"
    cfg = AgentConfig(name="hostR", controller=listed, join=token.strip(),
                      state_dir=str(tmp_path / "rs"), exports=(os.fsencode(tmp_path / "r"),))
    trust = agent_trust(cfg)
    assert trust is not None and trust.paths == enrolled_paths(cfg)
    first = trust.identity.serial
    renewer = Renewer(trust, listed)
    assert not renewer.due(time.time()) and renewer.due(trust.identity.not_after)
    renewer.renew_now()
    assert trust.generation == 1 and trust.identity.serial != first and trust.identity.name == "hostR"
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with channel(cluster.controller_addr, trust) as ch:  # the renewed certificate is accepted
        assert health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10).status == 1
    rc, out, err = cluster.ctl("cert", "revoke", "hostR")
    assert rc == 0, err
    assert str(first) in out and str(trust.identity.serial) in out and "hostR" in out
    with channel(cluster.controller_addr, trust) as ch:
        code, why = _code(health_pb2_grpc.HealthStub(ch).Check, health_pb2.HealthCheckRequest())
    assert code is grpc.StatusCode.UNAUTHENTICATED and "is revoked" in why
    rc, _, err = cluster.ctl("cert", "revoke", "nobody")
    assert rc == 2 and "issued no certificate to 'nobody'" in err
    with pytest.raises(ConfigError, match="unknown to this controller"):  # a second agent cannot reuse the state
        # Another secret: the last character changed (a token ending in "A" stays itself with an "A").
        other = token.strip()[:-1] + ("E" if token.strip().endswith("A") else "A")
        agent_trust(AgentConfig(name="hostR", controller=cluster.controller_addr, join=other,
                                state_dir=str(tmp_path / "rs2"), exports=cfg.exports))
