"""The TLS material a daemon or client uses: CA, own certificate and key, revocation list; reloaded live.

A daemon keeps one ``Trust``. ``refresh()`` re-reads the files when they changed (cheap: a stat of each, at
most once a second unless forced, e.g. on SIGHUP); a bad new set is logged and the previous one stays in
use, so a half-copied certificate never takes a daemon down. Connections already open keep the keys they
were made with; new handshakes get the new ones, so running jobs are never dropped by a reload.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from zcrepl.core.errors import ConfigError

if TYPE_CHECKING:  # zc-ctl reads its files unchecked (read_material): the identity types and logs load when used
    from zcrepl.core.identity import Identity

log = logging.getLogger(__name__)
REFRESH_EVERY = 1.0


@dataclass(frozen=True)
class TlsPaths:
    ca: str
    cert: str
    key: str
    crl: str = ""

    def files(self) -> tuple[str, ...]:
        return tuple(p for p in (self.ca, self.cert, self.key, self.crl) if p)


@dataclass(frozen=True)
class Material:
    ca_pem: bytes
    cert_pem: bytes  # own certificate (and any chain after it)
    key_pem: bytes
    identity: Identity | None  # None only for unchecked material (see Trust)
    revoked: frozenset[int]


def _stamp(paths: TlsPaths) -> tuple[tuple[int, int, int], ...]:
    out = []
    for p in paths.files():
        try:
            st = os.stat(p)
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((0, 0, 0))
    return tuple(out)


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise ConfigError(f"cannot read the {what} {path}: {err.strerror or err}") from err


def read_material(paths: TlsPaths) -> Material:
    """The files as they are, unchecked: what a short-lived client hands to gRPC (the handshake checks them;
    ``load_material`` explains a failure)."""
    return Material(_read(paths.ca, "CA certificate"), _read(paths.cert, "certificate"), _read(paths.key, "key"),
                    None, frozenset())


def load_material(paths: TlsPaths, *, kind: str, name: str = "") -> Material:
    """Read and check a set: the certificate is issued by the CA, matches the key, and names a ``kind``
    (and ``name``, when given) in its zcrepl SAN URI. ConfigError says which file is wrong and how to fix it."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization

    from zcrepl.core import pki

    raw = read_material(paths)
    ca_pem, cert_pem, key_pem = raw.ca_pem, raw.cert_pem, raw.key_pem
    try:
        ca = pki.load_cert(ca_pem)
        cert = pki.load_cert(cert_pem)
    except ValueError as err:
        raise ConfigError(f"{paths.cert} or {paths.ca} is not a PEM certificate ({err})") from err
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{paths.key} is not an unencrypted PEM private key ({err})") from err
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as err:
        raise ConfigError(f"{paths.cert} is not issued by the CA in {paths.ca}; issue it from that CA "
                          "(zc-ctl pki issue) or point --ca at the CA that issued it") from err
    if key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) != \
            cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise ConfigError(f"{paths.key} is not the key of {paths.cert}")
    ident = pki.identity_of(cert)
    if ident is None:
        raise ConfigError(f"{paths.cert} carries no zcrepl identity (a SAN URI like zcrepl://{kind}/NAME)")
    if ident.kind != kind or (name and ident.name != name):
        want = f"zcrepl://{kind}/{name}" if name else f"a {kind} certificate"
        raise ConfigError(f"{paths.cert} is for {ident}, not {want}; issue one with zc-ctl pki issue DIR --{kind} "
                          f"{name or 'NAME'}")
    if ident.not_after < time.time():
        raise ConfigError(f"{paths.cert} expired at {time.strftime('%Y-%m-%d %H:%M', time.gmtime(ident.not_after))}"
                          " UTC; issue a new one")
    revoked: frozenset[int] = frozenset()
    if paths.crl:
        revoked = pki.revoked_serials(_read(paths.crl, "revocation list"), ca_pem)
    if ident.serial in revoked:
        raise ConfigError(f"{paths.cert} is revoked by {paths.crl}; issue a new certificate")
    return Material(ca_pem, cert_pem, key_pem, ident, revoked)


class Trust:
    """The live material of one daemon; ``generation`` counts successful reloads."""

    def __init__(self, paths: TlsPaths, *, kind: str, name: str = "", check: bool = True) -> None:
        self.paths = paths
        self.kind, self.name = kind, name
        self._lock = threading.Lock()
        self._stamp = _stamp(paths)
        self._failed: tuple[tuple[int, int, int], ...] = ()
        # Daemons check their material (and follow it); a one-shot client (zc-ctl) skips the check, which
        # costs the import of the cryptography package, and explains a failed handshake afterwards.
        self.material = load_material(paths, kind=kind, name=name) if check else read_material(paths)
        self.checked = check
        self.generation = 0
        self._checked = time.monotonic()

    @property
    def identity(self) -> Identity:
        assert self.material.identity is not None, "identity of unchecked TLS material"
        return self.material.identity

    def revoked(self, serial: int) -> bool:
        self.refresh()
        return serial in self.material.revoked

    def refresh(self, force: bool = False) -> bool:
        """Reload when the files changed; True when a new set is now in use."""
        now = time.monotonic()
        if not self.checked or (not force and now - self._checked < REFRESH_EVERY):
            return False
        from zcrepl.core.logs import kv  # here: zc-ctl never refreshes, and never loads the log helpers

        with self._lock:
            self._checked = now
            stamp = _stamp(self.paths)
            if stamp == self._stamp and not force:
                return False
            try:
                fresh = load_material(self.paths, kind=self.kind, name=self.name)
            except ConfigError as err:
                # Files caught mid-copy (a key written before its certificate) are retried until they agree;
                # say so once per state of the files, not every second.
                if stamp != self._failed:
                    self._failed = stamp
                    log.error("TLS files changed but cannot be used yet; keeping the previous ones",
                              extra=kv(error=err))
                return False
            self._stamp = stamp
            if fresh == self.material:
                return False
            self.material = fresh
            self.generation += 1
        log.info("TLS files reloaded", extra=kv(identity=self.identity.uri, revoked=len(fresh.revoked),
                                                not_after=int(self.identity.not_after)))
        return True


def peer_identity(pem: bytes, cache: dict[bytes, Identity | None]) -> Identity | None:
    """The identity in a peer certificate (PEM as gRPC hands it over), memoised: parsing costs ~50 us."""
    if pem in cache:
        return cache[pem]
    from cryptography import x509

    from zcrepl.core import pki

    try:
        ident = pki.identity_of(x509.load_pem_x509_certificate(pem))
    except ValueError:
        ident = None
    if len(cache) > 4096:
        cache.clear()
    cache[pem] = ident
    return ident
