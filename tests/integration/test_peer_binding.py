"""Data-port tickets are bound to the source agent the controller named (issue 9, finding 11): by address
(real sockets from a second loopback address, 127.0.0.2), by certificate with encryption, and watch-rule
tickets expire and rotate without a reconciliation. Real daemons; the source is a fake agent where the test
must hold the ticket itself."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from zchelpers import Cluster, Daemon, FakeAgent, free_port, make_tree, snapshot, wait_for

from zcrepl.agent.transfer import frame as fr
from zcrepl.agent.transfer import tls
from zcrepl.agent.transfer.channel import Channel
from zcrepl.agent.transfer.frame import Hello
from zcrepl.core.types import Endpoint, JobOptions
from zcrepl.core.watchtypes import WATCH_ID_BASE

ELSEWHERE = "127.0.0.2"  # another address of this host: a stranger holding a stolen ticket


class Conn:
    """One data connection: HELLO with a ticket, from a chosen local address, optionally over TLS."""

    def __init__(self, address: str, hello: Hello, *, source: str = "127.0.0.1", cert: Any = None) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10, source_address=(source, 0))
        self.stream: Any = self.sock
        if cert is not None:
            self.stream = tls.connect(cert, self.sock, "hostB", time.monotonic() + 10)
            self.stream.settimeout(10)
        self.ch = Channel(self.stream)
        self.ch.send(fr.encode_hello(hello))
        self.kind, payload = self.ch.recv_frame()
        self.text = fr.decode_text(payload) if self.kind is fr.T.REFUSE else ""
        self.tickets = fr.decode_accept(payload) if self.kind is fr.T.ACCEPT else []

    def close(self) -> None:
        self.stream.close()
        self.sock.close()


def _hello(address: str, hello: Hello, **kw: Any) -> tuple[fr.T, str, list[bytes]]:
    c = Conn(address, hello, **kw)
    c.close()
    return c.kind, c.text, c.tickets


def test_a_job_ticket_works_only_from_its_source_agent(cluster: Cluster, evil: FakeAgent, tmp_path: Path) -> None:
    with cluster.client() as client:
        job = client.submit(Endpoint("evil", b"/evil/src"), Endpoint("hostB", os.fsencode(tmp_path / "b" / "dst")),
                            JobOptions(max_attempts=1))
    order = evil.next_order("send")
    hello = Hello(job.id, order.attempt, bytes(order.ticket), fr.ConnRole.CONTROL, 2)
    kind, why, _ = _hello(order.dest_data_address, hello, source=ELSEWHERE)
    assert kind is fr.T.REFUSE
    assert why == ("this ticket is for evil, which connects from 127.0.0.1; this connection came from 127.0.0.2 "
                   "(if evil sends from that address, add it to its source_addresses)")
    # The ticket survived the stranger: the named source still gets in, once.
    control = Conn(order.dest_data_address, hello)
    try:
        assert control.kind is fr.T.ACCEPT and len(control.tickets) == 2
        # The session's data tickets are bound to the control connection's address.
        data = Hello(job.id, order.attempt, control.tickets[0], fr.ConnRole.DATA, 0)
        kind, why, _ = _hello(order.dest_data_address, data, source=ELSEWHERE)
        assert kind is fr.T.REFUSE and "this connection came from 127.0.0.2" in why
        d = Conn(order.dest_data_address, data)
        assert d.kind is fr.T.ACCEPT
        d.close()
    finally:
        control.close()
    assert _hello(order.dest_data_address, hello)[0] is fr.T.REFUSE  # single use
    log = cluster.daemons["hostB"].log()
    assert "data connection refused: the ticket is bound to another peer" in log and "peer=127.0.0.2" in log


def test_a_watch_rule_ticket_works_only_from_its_source_agent(cluster: Cluster, evil: FakeAgent,
                                                              tmp_path: Path) -> None:
    with cluster.client() as client:
        rule = client.create_watch_rule(Endpoint("evil", b"/evil/src"),
                                  [Endpoint("hostB", os.fsencode(tmp_path / "b" / "w"))], JobOptions(), 0.0, 0.0)
    order = evil.next_order("watch_source")
    dest = order.dests[0]
    hello = Hello(WATCH_ID_BASE + rule.id, order.epoch, bytes(dest.ticket), fr.ConnRole.CONTROL, 1)
    wait_for(lambda: _hello(dest.data_address, hello)[0] is fr.T.ACCEPT, 20,
             what="hostB to take the rule's ticket")
    kind, why, _ = _hello(dest.data_address, hello, source=ELSEWHERE)
    assert kind is fr.T.REFUSE and why.startswith("this ticket is for evil, which connects from 127.0.0.1;")
    assert _hello(dest.data_address, hello)[0] is fr.T.ACCEPT  # reusable, and still valid


def test_an_encrypted_ticket_needs_the_source_agents_certificate(cluster: Cluster, evil: FakeAgent,
                                                                 tmp_path: Path) -> None:
    with cluster.client() as client:
        job = client.submit(Endpoint("evil", b"/evil/src"), Endpoint("hostB", os.fsencode(tmp_path / "b" / "dst")),
                            JobOptions(max_attempts=1, encrypt=True))
    order = evil.next_order("send")
    assert order.options.encrypt
    hello = Hello(job.id, order.attempt, bytes(order.ticket), fr.ConnRole.CONTROL, 1)
    kind, why, _ = _hello(order.dest_data_address, hello)
    assert kind is fr.T.REFUSE and "must be encrypted and the connection is plaintext" in why
    other = tls.TlsContexts(cluster.pki.trust("agent", "hostA"))  # a real agent's certificate, not evil's
    kind, why, _ = _hello(order.dest_data_address, hello, cert=other)
    assert kind is fr.T.REFUSE and why == "this ticket is for agent evil; the connection's certificate is agent hostA"
    own = tls.TlsContexts(cluster.pki.trust("agent", "evil"))
    kind, _, _ = _hello(order.dest_data_address, hello, cert=own, source=ELSEWHERE)
    assert kind is fr.T.REFUSE  # the right certificate from the wrong address
    assert _hello(order.dest_data_address, hello, cert=own)[0] is fr.T.ACCEPT


@pytest.fixture
def short_tickets(tmp_path: Path) -> Iterator[Cluster]:
    """A cluster whose watch-rule tickets live 3 s (rotated after 2.25 s)."""
    c = Cluster(tmp_path, sync_ticket_ttl=3)
    try:
        c.controller.start()
        c.add_agent("hostA", tmp_path / "a").start()
        c.add_agent("hostB", tmp_path / "b").start()
        c.wait_online("hostA", "hostB")
        yield c
    finally:
        c.close()


def test_watch_rule_tickets_expire_and_rotate(short_tickets: Cluster, tmp_path: Path) -> None:
    cluster = short_tickets
    evil = FakeAgent(cluster.controller_addr, "evil", pki=cluster.pki)
    try:
        cluster.wait_online("evil")
        with cluster.client() as client:
            rule = client.create_watch_rule(Endpoint("evil", b"/evil/src"),
                                      [Endpoint("hostB", os.fsencode(tmp_path / "b" / "w"))], JobOptions(), 0.0, 0.0)
        order = evil.next_order("watch_source")
        dest = order.dests[0]
        first = Hello(WATCH_ID_BASE + rule.id, order.epoch, bytes(dest.ticket), fr.ConnRole.CONTROL, 1)
        wait_for(lambda: _hello(dest.data_address, first)[0] is fr.T.ACCEPT, 20, what="the first ticket")
        rotated = evil.next_order("watch_ticket", timeout=20)
        assert (rotated.rule_id, rotated.epoch, rotated.host) == (rule.id, order.epoch, "hostB")
        second = Hello(WATCH_ID_BASE + rule.id, order.epoch, bytes(rotated.ticket), fr.ConnRole.CONTROL, 1)
        wait_for(lambda: _hello(dest.data_address, second)[0] is fr.T.ACCEPT, 20, what="the rotated ticket")
        assert _hello(dest.data_address, first)[0] is fr.T.ACCEPT  # the overlap: both work for a while
        # The first ticket dies with its lifetime; the rotated one (and its successors) keep working.
        wait_for(lambda: _hello(dest.data_address, first)[0] is fr.T.REFUSE, 20, what="the first to expire")
        _, why, _ = _hello(dest.data_address, first)
        assert why == "unknown, expired or already used ticket"
        latest = second
        while True:  # follow the rotations the fake source was sent
            try:
                o = evil.next_order("watch_ticket", timeout=0.1)
            except Exception:
                break
            latest = Hello(WATCH_ID_BASE + rule.id, o.epoch, bytes(o.ticket), fr.ConnRole.CONTROL, 1)
        wait_for(lambda: _hello(dest.data_address, latest)[0] is fr.T.ACCEPT, 20, what="the latest ticket")
    finally:
        evil.close()


def test_rotation_costs_no_reconciliation_and_loses_nothing(short_tickets: Cluster, tmp_path: Path) -> None:
    """A real watch rule across several rotations: every change arrives exactly once, no full rescan."""
    cluster = short_tickets
    src, dst = tmp_path / "a" / "src", tmp_path / "b" / "dst"
    src.mkdir()
    rc, _, err = cluster.ctl("replicate", "--watch", f"hostA:{src}", f"hostB:{dst}")
    assert rc == 0, err
    deadline = time.monotonic() + 8  # more than two rotations
    n = 0
    while time.monotonic() < deadline:
        (src / f"f{n:04d}").write_bytes(b"change %d" % n)
        n += 1
        time.sleep(0.1)
    wait_for(lambda: snapshot(dst) == snapshot(src), 30, what="every change at the destination")
    assert cluster.daemons["hostA"].log().count("watch rule ticket rotated") >= 2

    def counters() -> dict[str, Any]:
        _, out, _ = cluster.ctl("syncs", "--json")
        return dict(json.loads(out)[0]["counters"])

    c = wait_for(lambda: (c := counters())["files"] >= n and c, 20, what="the counters")
    assert c["reconciles"] == 1 and c["errors"] == 0, c  # only the first scan: rotations never rescanned
    assert c["files"] == n, c  # each change shipped once


def test_zc_ctl_encrypt_end_to_end(cluster: Cluster, tmp_path: Path) -> None:
    src = tmp_path / "a" / "src"
    make_tree(src, files=200, big=8 << 20)
    rc, out, err = cluster.ctl("replicate", f"hostA:{src}", f"hostB:{tmp_path}/b/sealed", "--encrypt")
    assert rc == 0, err
    assert "over TLS 1.3 (OpenSSL writes)" in out
    assert snapshot(src) == snapshot(tmp_path / "b" / "sealed")
    job_id = out.split()[1]
    rc, shown, _ = cluster.ctl("job", job_id)
    assert "data plane: TLS 1.3 (OpenSSL writes) (asked with --encrypt)" in shown and "; TLS 1.3" in shown
    doc = cluster.job(int(job_id))
    assert doc["transport"] == "tls" and doc["history"][-1]["transport"] == "tls" and doc["options"]["encrypt"]
    assert "transport=tls" in cluster.daemons["hostA"].log() and "transport=tls" in cluster.daemons["hostB"].log()
    rc, out, err = cluster.ctl("replicate", f"hostA:{src}", f"hostB:{tmp_path}/b/plain", "--json")
    assert rc == 0, err
    assert json.loads(out)["transport"] == "none"
    # A watch rule encrypted too.
    rc, out, err = cluster.ctl("replicate", "--watch", "--encrypt", f"hostA:{src}", f"hostB:{tmp_path}/b/w")
    assert rc == 0, err
    (src / "new-after-start").write_bytes(b"shipped over TLS")
    wait_for(lambda: (tmp_path / "b" / "w" / "new-after-start").exists(), 20, what="the change")
    assert snapshot(src) == snapshot(tmp_path / "b" / "w")
    wait_for(lambda: "change set shipped" in (log := cluster.daemons["hostA"].log()) and
             all("transport=tls" in line for line in log.splitlines() if "change set shipped" in line), 10,
             what="the change sets to be logged as TLS")


def test_cross_site_policy_encrypts_between_sites_only(tmp_path: Path) -> None:
    c = Cluster(tmp_path, encrypt="cross-site")
    try:
        c.controller.start()
        for name, site in (("hostA", "dc1"), ("hostB", "dc1"), ("hostC", "dc2")):
            d = c.add_agent(name, tmp_path / name)
            d.argv += ["--site", site]
            d.start()
        c.wait_online("hostA", "hostB", "hostC")
        src = tmp_path / "hostA" / "src"
        make_tree(src, files=20)
        for dst, want in (("hostB", "none"), ("hostC", "tls")):
            rc, out, err = c.ctl("replicate", f"hostA:{src}", f"{dst}:{tmp_path}/{dst}/copy", "--json")
            assert rc == 0, err
            assert json.loads(out)["transport"] == want, dst
        rc, out, _ = c.ctl("explain", str(json.loads(out)["id"]))
        assert "encrypted: encrypt = cross-site and the sites are dc1 and dc2" in out
    finally:
        c.close()


def test_an_insecure_agent_cannot_take_an_encrypted_job(tmp_path: Path) -> None:
    port = free_port()
    addr = f"127.0.0.1:{port}"
    ctl = Daemon("controller", [sys.executable, "-m", "zcrepl.controller", "--insecure", "--listen", addr,
                                "--state-dir", str(tmp_path / "state"), "--ready-file", str(tmp_path / "c.json"),
                                "--enroll-listen", "127.0.0.1:0", "--max-cpu-percent", "100",
                                "--max-load-per-core", "1000", "--high-cpu-percent", "100",
                                "--high-load-per-core", "1000", "--max-disk-busy-percent", "100",
                                "--high-disk-busy-percent", "100"],
                 tmp_path / "c.json", tmp_path / "c.log")
    agents = [Daemon(n, [sys.executable, "-m", "zcrepl.agent", "--insecure", "--name", n, "--controller", addr,
                         "--listen", "127.0.0.1:0", "--data-listen", "127.0.0.1:0", "--export", str(tmp_path / n),
                         "--ready-file", str(tmp_path / f"{n}.json")], tmp_path / f"{n}.json", tmp_path / f"{n}.log")
              for n in ("hostA", "hostB")]
    try:
        ctl.start()
        for a in agents:
            (tmp_path / a.name).mkdir()
            a.start()
        (tmp_path / "hostA" / "src").mkdir()
        (tmp_path / "hostA" / "src" / "f").write_bytes(b"x")

        def zc(*args: str) -> subprocess.CompletedProcess[str]:
            env = {k: v for k, v in os.environ.items() if not k.startswith("ZC_")}
            return subprocess.run([sys.executable, "-m", "zcrepl.cli.ctl", "--insecure", "--controller", addr,
                                   *args], capture_output=True, text=True, timeout=60, env=env)

        wait_for(lambda: zc("agents", "--json").stdout.count('"online": true') == 2, 20, what="agents online")
        p = zc("replicate", f"hostA:{tmp_path}/hostA/src", f"hostB:{tmp_path}/hostB/dst", "--encrypt")
        assert p.returncode == 1
        assert ("hostB has no TLS certificate (it runs --insecure), so it cannot receive an encrypted transfer; give "
                "it one (zc-agent --join TOKEN, or --ca/--cert/--key) or run the job without --encrypt") in p.stderr
        assert not (tmp_path / "hostB" / "dst").exists()
        assert zc("replicate", f"hostA:{tmp_path}/hostA/src", f"hostB:{tmp_path}/hostB/dst").returncode == 0
    finally:
        for d in (*agents, ctl):
            try:
                d.stop()
            except AssertionError:
                d.kill()
