"""The cluster's certificates: a CA, certificates for controllers, agents and operators, revocation.

Identity lives in one SAN URI per certificate, never in what a peer says::

    zcrepl://controller/NAME           a controller (also carries DNS SAN ``controller.zcrepl``)
    zcrepl://agent/NAME                an agent (also carries DNS SAN ``agent.zcrepl``)
    zcrepl://operator/NAME?role=ROLE   a person or script; ROLE is read, operator or admin

Clients verify the controller against the DNS name ``controller.zcrepl`` (not the address they dialled), so
certificates do not have to list every address a controller is reached by, and an agent's certificate, which
never carries that name, cannot pose as the controller. Bring-your-own CAs work the same way: put the URI (and,
on controllers, the DNS name) in the SANs. Keys are ECDSA P-256, written 0600.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from zcrepl.core.errors import ConfigError
from zcrepl.core.identity import (
    AGENT_DNS,
    CONTROLLER_DNS,
    KINDS,
    ROLES,
    SCHEME,
    Identity,
    identity_uri,
    parse_identity_uri,
)
from zcrepl.core.paths import valid_host_name

__all__ = ["AGENT_DNS", "CONTROLLER_DNS", "KINDS", "ROLES", "SCHEME", "Identity", "identity_uri",
           "parse_identity_uri"]

CA_FILE, CA_KEY_FILE, CRL_FILE = "ca.pem", "ca.key", "crl.pem"
DEFAULT_DAYS = 365
CA_DAYS = 3650


def identity_of(cert: x509.Certificate) -> Identity | None:
    """The identity of a certificate: exactly one ``zcrepl://`` SAN URI, or None."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    found = [p for uri in san.get_values_for_type(x509.UniformResourceIdentifier)
             if uri.startswith(f"{SCHEME}:") and (p := parse_identity_uri(uri)) is not None]
    ours = [uri for uri in san.get_values_for_type(x509.UniformResourceIdentifier) if uri.startswith(f"{SCHEME}:")]
    if len(found) != 1 or len(ours) != 1:
        return None
    kind, name, role = found[0]
    return Identity(kind, name, role, cert.serial_number, cert.not_valid_after_utc.timestamp())


def load_cert(pem: bytes) -> x509.Certificate:
    """The first certificate of a PEM bundle."""
    return x509.load_pem_x509_certificate(pem)


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER encoding, lowercase hex: what a join token pins."""
    return cert.fingerprint(hashes.SHA256()).hex()


def pem_fingerprint(pem: bytes) -> str:
    return hashlib.sha256(load_cert(pem).public_bytes(serialization.Encoding.DER)).hexdigest()


# -- keys and files ---------------------------------------------------------------------------------------
def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError("the CA key must be an ECDSA key")
    return key


def write_private(path: Path, data: bytes) -> None:
    """Write a file readable by its owner only, atomically (temp + rename), never through a symlink."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_public(path: Path, data: bytes) -> None:
    write_private(path, data)
    os.chmod(path, 0o644)


# -- the CA -----------------------------------------------------------------------------------------------
def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class CA:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls, name: str = "zcrepl cluster CA", days: int = CA_DAYS) -> CA:
        key = new_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, encipher_only=False,
                                             decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256()))
        return cls(cert, key)

    @classmethod
    def load(cls, directory: Path) -> CA:
        try:
            cert = load_cert((directory / CA_FILE).read_bytes())
            key = load_key((directory / CA_KEY_FILE).read_bytes())
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot read the CA in {directory}: {err}; create one with `zc-ctl pki init "
                              f"{directory}`") from err
        return cls(cert, key)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        write_private(directory / CA_KEY_FILE, key_pem(self.key))
        write_public(directory / CA_FILE, cert_pem(self.cert))

    @property
    def pem(self) -> bytes:
        return cert_pem(self.cert)

    def issue(self, public_key: ec.EllipticCurvePublicKey | object, kind: str, name: str, *, role: str = "",
              sans: tuple[str, ...] = (), days: int = DEFAULT_DAYS) -> x509.Certificate:
        """Sign a certificate for ``kind``/``name`` over ``public_key`` (whatever a CSR asked for is ignored)."""
        check_identity(kind, name, role)
        if not 1 <= days <= CA_DAYS:
            raise ConfigError(f"--days {days}: choose 1 to {CA_DAYS}")
        alt: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity_uri(kind, name, role))]
        if kind == "controller":
            alt.append(x509.DNSName(CONTROLLER_DNS))
        elif kind == "agent":
            alt.append(x509.DNSName(AGENT_DNS))
        for san in sans:
            alt.append(_general_name(san))
        now = _now()
        not_after = min(now + dt.timedelta(days=days), self.cert.not_valid_after_utc)
        return (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                .issuer_name(self.cert.subject).public_key(public_key)  # type: ignore[arg-type]
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(not_after)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False,
                                             crl_sign=False, content_commitment=False, data_encipherment=False,
                                             key_agreement=False, encipher_only=False, decipher_only=False),
                               critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .add_extension(x509.SubjectAlternativeName(alt), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                               critical=False)
                .sign(self.key, hashes.SHA256()))

    def sign_csr(self, csr_pem: bytes, kind: str, name: str, *, role: str = "", days: int = DEFAULT_DAYS
                 ) -> x509.Certificate:
        """Sign a CSR's public key for the identity the caller decided (never the one the CSR claims)."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as err:
            raise ConfigError(f"not a certificate signing request: {err}") from err
        if not csr.is_signature_valid:
            raise ConfigError("the certificate signing request is not signed by its own key")
        if not isinstance(csr.public_key(), ec.EllipticCurvePublicKey):
            raise ConfigError("the certificate signing request must carry an ECDSA key")
        return self.issue(csr.public_key(), kind, name, role=role, days=days)

    def crl(self, revoked: dict[int, float], days: int = 30) -> x509.CertificateRevocationList:
        """A CRL listing ``revoked`` (serial -> revocation time), valid for ``days``."""
        now = _now()
        b = (x509.CertificateRevocationListBuilder().issuer_name(self.cert.subject)
             .last_update(now - dt.timedelta(minutes=5)).next_update(now + dt.timedelta(days=days)))
        for serial, at in sorted(revoked.items()):
            b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(serial)
                                          .revocation_date(dt.datetime.fromtimestamp(at, dt.UTC)).build())
        return b.sign(self.key, hashes.SHA256())


def check_identity(kind: str, name: str, role: str = "") -> None:
    if kind not in KINDS:
        raise ConfigError(f"certificate kind {kind!r}: choose controller, agent or operator")
    if not valid_host_name(name):
        raise ConfigError(f"name {name!r}: use letters, digits, '.', '_' and '-'")
    if kind == "operator" and role not in ROLES:
        raise ConfigError(f"role {role!r}: choose read, operator or admin")
    if kind != "operator" and role:
        raise ConfigError("only operator certificates carry a role")


def _general_name(san: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(san))
    except ValueError:
        pass
    if not san or len(san) > 253 or any(c.isspace() or ord(c) < 32 for c in san):
        raise ConfigError(f"--san {san!r}: give a DNS name or an IP address")
    return x509.DNSName(san)


def make_csr(key: ec.EllipticCurvePrivateKey, name: str) -> bytes:
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])).sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


# -- revocation lists -------------------------------------------------------------------------------------
def revoked_serials(crl_pem: bytes, ca_pem: bytes) -> frozenset[int]:
    """Serials a CRL revokes, after checking it is signed by the cluster CA (a forged list is an error)."""
    try:
        crl = x509.load_pem_x509_crl(crl_pem)
        ca = load_cert(ca_pem)
    except ValueError as err:
        raise ConfigError(f"not a PEM certificate revocation list: {err}") from err
    if crl.issuer != ca.subject or not crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
        raise ConfigError("the revocation list is not signed by the cluster CA")
    return frozenset(r.serial_number for r in crl)


def write_crl(path: Path, ca: CA, revoked: dict[int, float]) -> None:
    write_public(path, ca.crl(revoked).public_bytes(serialization.Encoding.PEM))


def revoke(directory: Path, name: str) -> tuple[int, int]:
    """Add the certificate ``directory/NAME.pem`` to ``directory/crl.pem``; (serial, certificates revoked)."""
    ca = CA.load(directory)
    try:
        cert = load_cert((directory / f"{name}.pem").read_bytes())
    except (OSError, ValueError) as err:
        raise ConfigError(f"no certificate {directory / (name + '.pem')} to revoke ({err})") from err
    revoked: dict[int, float] = {}
    crl_path = directory / CRL_FILE
    if crl_path.exists():
        crl = x509.load_pem_x509_crl(crl_path.read_bytes())
        revoked = {r.serial_number: r.revocation_date_utc.timestamp() for r in crl}
    revoked.setdefault(cert.serial_number, _now().timestamp())
    write_crl(crl_path, ca, revoked)
    return cert.serial_number, len(revoked)


def issue_files(directory: Path, kind: str, name: str, *, role: str = "", sans: tuple[str, ...] = (),
                days: int = DEFAULT_DAYS) -> tuple[Path, Path]:
    """``zc-ctl pki issue``: write ``NAME.pem`` (leaf + CA) and ``NAME.key`` (0600) next to the CA."""
    ca = CA.load(directory)
    key = new_key()
    cert = ca.issue(key.public_key(), kind, name, role=role, sans=sans, days=days)
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    write_private(key_path, key_pem(key))
    write_public(cert_path, cert_pem(cert) + ca.pem)
    return cert_path, key_path


def init_ca(directory: Path) -> Path:
    """``zc-ctl pki init``: a new CA in ``directory``; refuses to replace one."""
    if (directory / CA_KEY_FILE).exists() or (directory / CA_FILE).exists():
        raise ConfigError(f"{directory} already holds a CA; issue certificates from it, or choose another directory")
    CA.create().save(directory)
    return directory / CA_FILE
