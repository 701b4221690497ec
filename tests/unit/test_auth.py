"""The role table, identity parsing and the authentication rules, as tables."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from zcrepl.core import pki
from zcrepl.core.config import AgentConfig, ControllerConfig, load_config
from zcrepl.core.errors import ConfigError
from zcrepl.core.trust import TlsPaths, Trust, load_material
from zcrepl.proto import agent_pb2, controller_pb2, security_pb2
from zcrepl.proto.auth import ADMIN, AGENT, METHODS, OPERATOR, READ, authenticate, denial

ADMIN_ID = pki.Identity("operator", "alice", "admin")
OPER_ID = pki.Identity("operator", "olga", "operator")
READ_ID = pki.Identity("operator", "rita", "read")
AGENT_ID = pki.Identity("agent", "hostA")
CTL_ID = pki.Identity("controller", "ctl")


def test_every_rpc_of_every_service_has_a_role() -> None:
    for module in (controller_pb2, security_pb2, agent_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            if service.name == "Enrollment":
                continue  # served alone on the enrolment port, where the join token is the credential
            for m in service.methods:
                assert f"/{service.full_name}/{m.name}" in METHODS, f"{service.full_name}/{m.name} has no role"


@pytest.mark.parametrize(("ident", "method", "allowed"), [
    (READ_ID, "ListAgents", True), (READ_ID, "ExplainJob", True), (READ_ID, "WatchJob", True),
    (READ_ID, "ListWatchRules", True), (READ_ID, "SubmitJob", False), (READ_ID, "CancelJob", False),
    (READ_ID, "RemoveWatchRule", False), (READ_ID, "CreateWatchRule", False), (READ_ID, "Connect", False),
    (OPER_ID, "SubmitJob", True), (OPER_ID, "SubmitFanout", True), (OPER_ID, "CancelJob", True),
    (OPER_ID, "PauseWatchRule", True), (OPER_ID, "RemoveWatchRule", True), (OPER_ID, "ListAgents", True),
    (OPER_ID, "RemoveAgent", False), (OPER_ID, "Connect", False),
    (ADMIN_ID, "RemoveAgent", True), (ADMIN_ID, "SubmitJob", True), (ADMIN_ID, "Connect", False),
    (AGENT_ID, "Connect", True), (AGENT_ID, "SubmitJob", False), (AGENT_ID, "ListAgents", False),
    (AGENT_ID, "CancelJob", False), (CTL_ID, "Connect", False), (CTL_ID, "ListAgents", True),
    (CTL_ID, "SubmitJob", False),
])
def test_controller_roles(ident: pki.Identity, method: str, allowed: bool) -> None:
    assert (denial(ident, f"/zcrepl.v1.Controller/{method}") is None) is allowed


@pytest.mark.parametrize(("ident", "method", "allowed"), [
    (ADMIN_ID, "CreateJoinToken", True), (OPER_ID, "CreateJoinToken", False), (READ_ID, "CreateJoinToken", False),
    (ADMIN_ID, "RevokeCertificate", True), (OPER_ID, "RevokeCertificate", False), (READ_ID, "ListRevoked", True),
    (AGENT_ID, "RenewCertificate", True), (ADMIN_ID, "RenewCertificate", False), (AGENT_ID, "CreateJoinToken", False),
])
def test_security_roles(ident: pki.Identity, method: str, allowed: bool) -> None:
    assert (denial(ident, f"/zcrepl.v1.Security/{method}") is None) is allowed


def test_unknown_methods_are_refused_for_everyone_and_health_is_open_to_all() -> None:
    for ident in (ADMIN_ID, AGENT_ID, CTL_ID):
        assert "not a method anyone may call" in (denial(ident, "/zcrepl.v1.Controller/DropTables") or "")
        assert denial(ident, "/grpc.health.v1.Health/Check") is None
    assert denial(READ_ID, "/zcrepl.v1.Agent/GetHealth") is None
    assert denial(AGENT_ID, "/zcrepl.v1.Agent/GetHealth") is not None


def test_denials_are_one_sentence_naming_the_role() -> None:
    why = denial(READ_ID, "/zcrepl.v1.Controller/SubmitJob")
    assert why == "rita has the read role; SubmitJob needs operator (ask an admin for a certificate)"
    why = denial(AGENT_ID, "/zcrepl.v1.Controller/SubmitJob")
    assert why is not None and "needs an operator certificate with the operator role" in why


def test_roles_nest() -> None:
    ranks = {READ: 1, OPERATOR: 2, ADMIN: 3}
    for method, need in METHODS.items():
        if need not in ranks:
            continue
        for role, rank in ranks.items():
            ident = pki.Identity("operator", "x", role)
            assert (denial(ident, method) is None) is (rank >= ranks[need]), (method, role)
    assert AGENT in METHODS.values()


@pytest.mark.parametrize(("uri", "parsed"), [
    ("zcrepl://agent/hostA", ("agent", "hostA", "")),
    ("zcrepl://controller/ctl-1", ("controller", "ctl-1", "")),
    ("zcrepl://operator/alice?role=admin", ("operator", "alice", "admin")),
    ("zcrepl://operator/alice", None),  # an operator needs a role
    ("zcrepl://agent/hostA?role=admin", None),  # agents carry none
    ("zcrepl://operator/alice?role=root", None),
    ("zcrepl://agent/host A", None), ("zcrepl://agent/", None), ("zcrepl://agent/a/b", None),
    ("zcrepl://agent/hostA#x", None), ("https://agent/hostA", None), ("zcrepl://robot/r2", None),
    ("zcrepl://agent/" + "a" * 300, None),
])
def test_identity_uris(uri: str, parsed: tuple[str, str, str] | None) -> None:
    assert pki.parse_identity_uri(uri) == parsed


def _trust(tmp_path: Path, kind: str, name: str, role: str = "") -> Trust:
    if not (tmp_path / "ca.pem").exists():
        pki.init_ca(tmp_path)
    cert, key = pki.issue_files(tmp_path, kind, name, role=role)
    return Trust(TlsPaths(str(tmp_path / "ca.pem"), str(cert), str(key)), kind=kind)


def test_authenticate_requires_tls13_a_single_identity_and_no_revocation(tmp_path: Path) -> None:
    trust = _trust(tmp_path, "controller", "ctl")
    cert, _ = pki.issue_files(tmp_path, "operator", "olga", role="operator")
    pem = cert.read_bytes().split(b"-----END CERTIFICATE-----")[0] + b"-----END CERTIFICATE-----\n"
    ok = {"ssl_tls_version": [b"TLSv1.3"], "x509_pem_cert": [pem]}
    ident, why = authenticate(ok, trust, {})
    assert ident is not None and ident.name == "olga" and ident.role == "operator" and why == ""
    assert authenticate({**ok, "ssl_tls_version": [b"TLSv1.2"]}, trust, {}) == (None, "TLS 1.3 is required")
    assert authenticate({"ssl_tls_version": [b"TLSv1.3"]}, trust, {})[1] == "no client certificate was presented"
    # A certificate of the right CA without a zcrepl identity, and one with two.
    ca = pki.CA.load(tmp_path)
    for uris in ([], ["zcrepl://agent/a", "zcrepl://agent/b"]):
        sans = [x509.DNSName("h.example"), *(x509.UniformResourceIdentifier(u) for u in uris)]
        now = dt.datetime.now(dt.UTC)
        other = (x509.CertificateBuilder().subject_name(ca.cert.subject).issuer_name(ca.cert.subject)
                 .public_key(pki.new_key().public_key()).serial_number(7).not_valid_before(now)
                 .not_valid_after(now + dt.timedelta(days=1))
                 .add_extension(x509.SubjectAlternativeName(sans), critical=False).sign(ca.key, hashes.SHA256()))
        ident, why = authenticate({**ok, "x509_pem_cert": [pki.cert_pem(other)]}, trust, {})
        assert ident is None and "carries no zcrepl identity" in why
    # Revoked: the controller's CRL names the serial.
    pki.revoke(tmp_path, "olga")
    trust.paths = TlsPaths(trust.paths.ca, trust.paths.cert, trust.paths.key, str(tmp_path / "crl.pem"))
    trust.refresh(force=True)
    ident, why = authenticate(ok, trust, {})
    assert ident is None and why == "the certificate of operator olga (operator) is revoked"


def test_material_is_checked_at_load(tmp_path: Path) -> None:
    pki.init_ca(tmp_path / "one")
    pki.init_ca(tmp_path / "two")
    cert, key = pki.issue_files(tmp_path / "one", "agent", "hostA")
    other_cert, other_key = pki.issue_files(tmp_path / "two", "agent", "hostA")
    ca = str(tmp_path / "one" / "ca.pem")
    assert load_material(TlsPaths(ca, str(cert), str(key)), kind="agent", name="hostA").identity.name == "hostA"
    with pytest.raises(ConfigError, match="is not issued by the CA"):
        load_material(TlsPaths(ca, str(other_cert), str(other_key)), kind="agent")
    with pytest.raises(ConfigError, match="is not the key of"):
        load_material(TlsPaths(ca, str(cert), str(other_key)), kind="agent")
    with pytest.raises(ConfigError, match="is for agent hostA, not zcrepl://agent/hostB"):
        load_material(TlsPaths(ca, str(cert), str(key)), kind="agent", name="hostB")
    with pytest.raises(ConfigError, match="is for agent hostA, not a controller certificate"):
        load_material(TlsPaths(ca, str(cert), str(key)), kind="controller")
    with pytest.raises(ConfigError, match="cannot read the key"):
        load_material(TlsPaths(ca, str(cert), str(tmp_path / "missing.key")), kind="agent")


def test_keys_are_private_and_issue_validates(tmp_path: Path) -> None:
    pki.init_ca(tmp_path)
    assert (tmp_path / "ca.key").stat().st_mode & 0o777 == 0o600
    cert, key = pki.issue_files(tmp_path, "operator", "alice", role="admin", sans=("10.0.0.1", "ctl.example"))
    assert key.stat().st_mode & 0o777 == 0o600 and cert.stat().st_mode & 0o777 == 0o644
    with pytest.raises(ConfigError, match="already holds a CA"):
        pki.init_ca(tmp_path)
    with pytest.raises(ConfigError, match="role"):
        pki.issue_files(tmp_path, "operator", "bob")
    with pytest.raises(ConfigError, match="name"):
        pki.issue_files(tmp_path, "agent", "bad name")
    with pytest.raises(ConfigError, match="--san"):
        pki.issue_files(tmp_path, "agent", "h", sans=("a b",))


def test_secure_by_default_config() -> None:
    with pytest.raises(ConfigError, match="missing key"):
        load_config(ControllerConfig, flags={"ca": "a", "cert": "b"}, environ={})
    with pytest.raises(ConfigError, match="insecure cannot be combined"):
        load_config(ControllerConfig, flags={"insecure": True, "auto_pki": True}, environ={})
    insecure = load_config(ControllerConfig, flags={"insecure": True}, environ={})
    assert insecure.listen == "127.0.0.1:7420"  # plaintext binds loopback unless told otherwise
    assert load_config(ControllerConfig, flags={"auto_pki": True}, environ={}).listen == "0.0.0.0:7420"
    told = load_config(ControllerConfig, flags={"insecure": True, "listen": "0.0.0.0:9"}, environ={})
    assert told.listen == "0.0.0.0:9" and told.enroll_listen == "0.0.0.0:7423"
    agent = load_config(AgentConfig, flags={"insecure": True, "exports": ["/"]}, environ={})
    assert agent.listen == "127.0.0.1:7421" and agent.data_listen == "127.0.0.1:7422"
