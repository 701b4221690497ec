"""The agent's TLS identity: certificate files, or enrolment with a join token, and renewal before expiry.

Enrolment (``--join TOKEN``): open TLS to the controller's enrolment port without trusting anything yet, take
the CA certificate from the chain it presents only if its SHA-256 is the one the token pins, then, now
verifying the controller against that CA, send a CSR with the token. The key never leaves this host; the
certificate, key and CA land in ``state_dir/pki`` (key 0600) and are reused at every later start.

Renewal: an enrolled certificate is renewed over the agent's authenticated channel once two thirds of its
life have passed; new handshakes pick the new files up (core/trust.py), open connections keep theirs.

Both go to any controller of the agent's list (``--controller a:7420,b:7420,c:7420``), tried in turn: every
controller of one store signs with the same CA and reads the same join tokens and issued certificates, leader or
follower, so one controller down (the first of the list included) stops neither.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from pathlib import Path

import grpc
from cryptography import x509

from zcrepl.core import jointoken, pki
from zcrepl.core.backoff import backoff_delay
from zcrepl.core.config import AgentConfig, controller_list, split_address
from zcrepl.core.errors import ConfigError, UserError
from zcrepl.core.logs import kv
from zcrepl.core.trust import TlsPaths, Trust
from zcrepl.proto import security_pb2 as sp
from zcrepl.proto import security_pb2_grpc
from zcrepl.proto.channels import KEEPALIVE_CLIENT, channel

log = logging.getLogger(__name__)
PKI_DIR = "pki"
ENROLL_PATIENCE = 60.0  # seconds to keep trying an unreachable controller at first start
_DER = 2  # _ssl.ENCODING_DER: the encoding argument of the chain's certificate objects before 3.13


def enrolled_paths(cfg: AgentConfig) -> TlsPaths:
    d = Path(cfg.state_dir) / PKI_DIR
    return TlsPaths(str(d / pki.CA_FILE), str(d / "agent.pem"), str(d / "agent.key"), cfg.crl)


def agent_trust(cfg: AgentConfig) -> Trust | None:
    """None when insecure; the files given, or the enrolled ones (enrolling first with a join token)."""
    if cfg.insecure:
        return None
    if cfg.cert:
        return Trust(TlsPaths(cfg.ca, cfg.cert, cfg.key, cfg.crl), kind="agent", name=cfg.name)
    paths = enrolled_paths(cfg)
    if not Path(paths.cert).exists():
        if not cfg.join:
            raise ConfigError(
                "no TLS material: pass --ca FILE --cert FILE --key FILE, or --join TOKEN (printed by `zc-ctl token "
                f"create --agent {cfg.name}` on the controller), or --insecure for a plaintext test setup on loopback")
        enroll(cfg, paths)
    return Trust(paths, kind="agent", name=cfg.name)


def fetch_ca(host: str, port: int, pin: str, timeout: float = 10.0) -> bytes:
    """The CA certificate (PEM) in the chain the enrolment port presents, if its SHA-256 is ``pin``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # nothing is trusted here: the pin below decides
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection((host, port), timeout=timeout) as raw, ctx.wrap_socket(raw) as tls:
        # Python 3.13 has SSLSocket.get_unverified_chain(); 3.11 and 3.12 have it on the inner object.
        getter = getattr(tls, "get_unverified_chain", None) or tls._sslobj.get_unverified_chain  # type: ignore[attr-defined]
        chain = getter() or []
    for cert in chain:
        der = cert.public_bytes(_DER) if hasattr(cert, "public_bytes") else bytes(cert)
        parsed = x509.load_der_x509_certificate(der)
        if pki.fingerprint(parsed) == pin:
            return pki.cert_pem(parsed)
    raise ConfigError(f"the controller at {host}:{port} does not present the CA the join token pins "
                      f"({pin[:16]}...): the token belongs to another cluster, or something sits in between")


def enroll(cfg: AgentConfig, paths: TlsPaths) -> None:
    try:
        port, pin, _ = jointoken.parse(cfg.join)
    except UserError as err:
        raise ConfigError(f"--join: {err}") from err
    hosts = list(dict.fromkeys(split_address(c)[0] for c in controller_list(cfg.controller)))
    key = pki.new_key()
    request = sp.EnrollRequest(token=cfg.join.strip(), csr_pem=pki.make_csr(key, cfg.name), name=cfg.name)
    deadline = time.monotonic() + ENROLL_PATIENCE
    failures = 0
    while True:
        issued, why = _enroll_round(hosts, port, pin, request)
        if issued is not None:
            break
        failures += 1
        if time.monotonic() > deadline:
            where = ", ".join(f"{h}:{port}" for h in hosts)
            raise ConfigError(f"cannot reach the controller's enrolment port {where} ({why}); check "
                              "--controller and that the controller runs with its own CA (--auto-pki)")
        delay = backoff_delay(failures, 0.5, 5.0)
        log.info("enrolment: controller not reachable yet", extra=kv(controller=",".join(hosts), port=port,
                                                                     error=why, retry_in=round(delay, 2)))
        time.sleep(delay)
    _store(paths, issued, key_pem=pki.key_pem(key))
    log.info("enrolled with the controller", extra=kv(name=issued.name, not_after=int(issued.not_after),
                                                      dir=str(Path(paths.cert).parent)))


def _enroll_round(hosts: list[str], port: int, pin: str, request: sp.EnrollRequest
                  ) -> tuple[sp.IssuedCertificate | None, str]:
    """One try at each controller's enrolment port: the certificate, or None and why the last one failed.
    A refusal (a bad token, another CA) ends enrolment: every controller would give the same answer."""
    why = ""
    for host in hosts:
        try:
            ca_pem = fetch_ca(host, port, pin)
            creds = grpc.ssl_channel_credentials(ca_pem)
            with grpc.secure_channel(f"{host}:{port}", creds, options=[
                    *KEEPALIVE_CLIENT, ("grpc.ssl_target_name_override", pki.CONTROLLER_DNS)]) as ch:
                issued: sp.IssuedCertificate = security_pb2_grpc.EnrollmentStub(ch).Enroll(request, timeout=15)
            return issued, ""
        except grpc.RpcError as err:
            if not _transient(err):
                raise ConfigError(f"enrolment refused by the controller at {host}:{port}: "
                                  f"{err.details() if hasattr(err, 'details') else err}") from err
            why = f"{host}:{port}: {err.details() if hasattr(err, 'details') else err}"
        except OSError as err:
            why = f"{host}:{port}: {err}"
    return None, why


def _transient(err: grpc.RpcError) -> bool:
    code = err.code() if hasattr(err, "code") else None
    return code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def _store(paths: TlsPaths, issued: sp.IssuedCertificate, key_pem: bytes) -> None:
    d = Path(paths.cert).parent
    d.mkdir(parents=True, exist_ok=True)
    d.chmod(0o700)
    pki.write_public(Path(paths.ca), bytes(issued.ca_pem))
    # The key goes first: a reload that sees the new key with the old certificate waits for the certificate.
    pki.write_private(Path(paths.key), key_pem)
    pki.write_public(Path(paths.cert), bytes(issued.cert_pem))


class Renewer:
    """Renews an enrolled certificate at two thirds of its life (retrying hourly-ish on failure)."""

    def __init__(self, trust: Trust, controller: str, check_every: float = 60.0) -> None:
        self.trust = trust
        self.controllers = controller_list(controller)
        self.check_every = check_every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="zc-renew", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def due(self, now: float) -> bool:
        cert = pki.load_cert(self.trust.material.cert_pem)
        start, end = cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()
        return now >= start + (end - start) * 2 / 3

    def renew_now(self) -> None:
        key = pki.new_key()
        request = sp.RenewRequest(csr_pem=pki.make_csr(key, self.trust.identity.name))
        for i, target in enumerate(self.controllers):
            try:
                with channel(target, self.trust) as ch:
                    issued = security_pb2_grpc.SecurityStub(ch).RenewCertificate(request, timeout=15)
                break
            except grpc.RpcError as err:
                if not _transient(err) or i == len(self.controllers) - 1:
                    raise
                log.info("certificate renewal: controller out of reach, trying the next",
                         extra=kv(controller=target, error=err.details() if hasattr(err, "details") else err))
        _store(self.trust.paths, issued, pki.key_pem(key))
        self.trust.refresh(force=True)
        log.info("certificate renewed", extra=kv(not_after=int(issued.not_after)))

    def _run(self) -> None:
        while not self._stop.wait(self.check_every):
            if not self.due(time.time()):
                continue
            try:
                self.renew_now()
            except (grpc.RpcError, OSError, ConfigError) as err:
                log.warning("certificate renewal failed; will retry", extra=kv(error=err))
