"""The controller's TLS identity and, when it holds the CA key, its duties as the cluster's authority.

Three ways to start (core/config.py ``check_tls``): files given (``ca``/``cert``/``key``, plus ``ca_key`` to sign
and ``crl`` to revoke), ``auto_pki`` (a CA of its own in ``state_dir/pki``, created on the first start, reused
after, with an ``admin`` operator certificate for the local zc-ctl), or ``insecure`` (no TLS at all).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from zcrepl.core import pki
from zcrepl.core.config import ControllerConfig
from zcrepl.core.errors import ConfigError, Conflict
from zcrepl.core.logs import kv
from zcrepl.core.trust import TlsPaths, Trust

log = logging.getLogger(__name__)
AUTO_DIR = "pki"
CONTROLLER_DAYS = 365


@dataclass
class Issued:
    cert_pem: bytes  # leaf + CA
    serial: int
    not_after: float


class Authority:
    def __init__(self, trust: Trust, ca: pki.CA | None, crl_path: Path | None) -> None:
        self.trust = trust
        self.ca = ca
        self.crl_path = crl_path

    @property
    def fingerprint(self) -> str:
        return pki.pem_fingerprint(self.trust.material.ca_pem)

    def can_sign(self) -> bool:
        return self.ca is not None

    def sign(self, csr_pem: bytes, kind: str, name: str, days: int) -> Issued:
        if self.ca is None:
            raise Conflict("this controller does not hold the CA key: start it with --auto-pki or --ca-key FILE "
                           "to enrol agents and renew their certificates")
        cert = self.ca.sign_csr(csr_pem, kind, name, days=days)
        return Issued(pki.cert_pem(cert) + self.ca.pem, cert.serial_number, cert.not_valid_after_utc.timestamp())

    def revoked(self) -> dict[int, float]:
        if self.crl_path is None or not self.crl_path.exists():
            return {}
        crl = x509.load_pem_x509_crl(self.crl_path.read_bytes())
        return {r.serial_number: r.revocation_date_utc.timestamp() for r in crl}

    def revoke(self, serials: list[int]) -> dict[int, float]:
        """Add serials to the CRL file and start enforcing it at once; the whole list after."""
        if self.ca is None or self.crl_path is None:
            raise Conflict("this controller cannot revoke: it needs the CA key and a revocation list file "
                           "(--auto-pki, or --ca-key FILE with --crl FILE); or revoke offline with "
                           "zc-ctl pki revoke DIR NAME and point every daemon's --crl at the result")
        revoked = self.revoked()
        now = time.time()
        for s in serials:
            revoked.setdefault(s, now)
        pki.write_crl(self.crl_path, self.ca, revoked)
        self.trust.refresh(force=True)
        return revoked


def _sans(extra: tuple[str, ...]) -> tuple[str, ...]:
    names = ["localhost", "127.0.0.1", "::1", socket.gethostname(), socket.getfqdn(), *extra]
    out: list[str] = []
    for n in names:
        if n and n not in out and n != pki.CONTROLLER_DNS:
            out.append(n)
    return tuple(out)


def ensure_auto_pki(state_dir: str, extra_sans: tuple[str, ...] = ()) -> tuple[TlsPaths, Path]:
    """Create (first start) or check the controller's own PKI; returns its files and the CA key's path."""
    d = Path(state_dir) / AUTO_DIR
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    if not (d / pki.CA_FILE).exists():
        pki.CA.create().save(d)
        log.info("created the cluster CA", extra=kv(dir=str(d)))
    ca = pki.CA.load(d)
    sans = _sans(extra_sans)
    cert_path, key_path = d / "controller.pem", d / "controller.key"
    if _needs_new(cert_path, sans):
        key = pki.new_key()
        cert = ca.issue(key.public_key(), "controller", "controller", sans=sans, days=CONTROLLER_DAYS)
        pki.write_private(key_path, pki.key_pem(key))
        pki.write_public(cert_path, pki.cert_pem(cert) + ca.pem)
        log.info("issued the controller certificate", extra=kv(sans=",".join(sans)))
    if not (d / "admin.pem").exists():
        pki.issue_files(d, "operator", "admin", role="admin")
        log.info("issued a local admin certificate for zc-ctl", extra=kv(cert=str(d / "admin.pem")))
    crl = d / pki.CRL_FILE
    if not crl.exists():
        pki.write_crl(crl, ca, {})
    return TlsPaths(str(d / pki.CA_FILE), str(cert_path), str(key_path), str(crl)), d / pki.CA_KEY_FILE


def _needs_new(cert_path: Path, sans: tuple[str, ...]) -> bool:
    """No certificate yet, a third of its life left, or a name it should carry is missing."""
    try:
        cert = pki.load_cert(cert_path.read_bytes())
    except (OSError, ValueError):
        return True
    start, end = cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()
    if time.time() > end - (end - start) / 3:
        return True
    have = {str(v) for v in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            .get_values_for_type(x509.DNSName)}
    have |= {str(v) for v in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
             .get_values_for_type(x509.IPAddress)}
    return not set(sans) <= have


def authority_from_config(cfg: ControllerConfig) -> Authority | None:
    """None for an insecure controller; ConfigError with the way out when TLS material is missing or wrong."""
    if cfg.insecure:
        return None
    if cfg.cert:
        paths = TlsPaths(cfg.ca, cfg.cert, cfg.key, cfg.crl)
        trust = Trust(paths, kind="controller")
        ca = None
        if cfg.ca_key:
            try:
                key = pki.load_key(Path(cfg.ca_key).read_bytes())
            except (OSError, ValueError) as err:
                raise ConfigError(f"cannot read the CA key {cfg.ca_key}: {err}") from err
            ca = pki.CA(pki.load_cert(trust.material.ca_pem), key)
        return Authority(trust, ca, Path(cfg.crl) if cfg.crl and ca else None)
    auto_dir = Path(cfg.state_dir) / AUTO_DIR
    if cfg.auto_pki or (auto_dir / pki.CA_FILE).exists():
        paths, ca_key = ensure_auto_pki(cfg.state_dir, cfg.san)
        trust = Trust(paths, kind="controller")
        return Authority(trust, pki.CA.load(ca_key.parent), Path(paths.crl))
    raise ConfigError(
        "no TLS material: pass --ca FILE --cert FILE --key FILE (zc-ctl pki init / pki issue make them), or "
        f"--auto-pki to keep a CA of the controller's own in {auto_dir}, or --insecure for a plaintext test setup "
        "on loopback")
