"""Who is at the other end of a data connection, and whom a ticket was minted for.

A ticket alone proves only that its holder saw it. The controller therefore also names the peer: the source
agent that may present it, the addresses that agent may connect from, and whether the connection must be
encrypted. The receiver checks all of them before it consumes the ticket, so a ticket used from anywhere
else is refused and stays valid for the real source.

The address rule (documented in the README): a source agent may connect from the address its controller
stream comes from, from the hosts of the gRPC and data addresses it advertises, and from any address it lists
in its ``source_addresses`` config (for multi-homed hosts whose route to a peer leaves by another interface).
Names among them are resolved by the receiver when it registers the ticket.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from zcrepl.core.logs import kv

log = logging.getLogger(__name__)

NONE, TLS, KTLS = "none", "tls", "ktls"  # how a transfer's bytes travelled, as logged and shown by zc-ctl job
_RESOLVE_TTL = 60.0


@dataclass(frozen=True)
class Peer:
    """The far end of one accepted data connection."""

    address: str  # normalised IP (IPv4-mapped IPv6 as plain IPv4)
    identity: str = ""  # agent name in the TLS client certificate; "" on a plaintext connection
    transport: str = NONE

    @property
    def encrypted(self) -> bool:
        return self.transport != NONE


@dataclass(frozen=True)
class Binding:
    """The peer a ticket is for. Empty ``addresses`` and ``name`` bind nothing (an older controller's order)."""

    name: str = ""  # the source agent the controller named
    addresses: frozenset[str] = frozenset()
    encrypt: bool = False

    def refusal(self, peer: Peer | None) -> str:
        """Why ``peer`` may not use the ticket, or "" when it may."""
        if peer is None:
            return "" if not (self.name or self.addresses or self.encrypt) else "the connection's peer is unknown"
        who = self.name or "the source agent"
        if self.encrypt and not peer.encrypted:
            return (f"this transfer must be encrypted and the connection is plaintext; {who} must connect with TLS "
                    "(it needs its agent certificate)")
        if self.addresses and peer.address not in self.addresses:
            return (f"this ticket is for {who}, which connects from {', '.join(sorted(self.addresses))}; this "
                    f"connection came from {peer.address} (if {who} sends from that address, add it to its "
                    "source_addresses)")
        if peer.identity and self.name and peer.identity != self.name:
            return f"this ticket is for agent {self.name}; the connection's certificate is agent {peer.identity}"
        return ""

    def narrowed(self, peer: Peer) -> Binding:
        """The binding for the data connections of a session whose control connection came from ``peer``:
        the same agent, from the same address, at least as encrypted."""
        return Binding(self.name or peer.identity, frozenset({peer.address}), self.encrypt or peer.encrypted)


def normalise(address: str) -> str:
    """An IP literal in canonical form; ValueError for anything else."""
    ip = ipaddress.ip_address(address.strip("[]").split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


_cache: dict[str, tuple[float, frozenset[str]]] = {}
_cache_lock = threading.Lock()


def resolve(hosts: Iterable[str]) -> frozenset[str]:
    """The IPs of ``hosts`` (literals as they are, names through the resolver, cached a minute); a name that
    does not resolve is logged and left out, which only narrows what is accepted."""
    out: set[str] = set()
    for host in hosts:
        if not host:
            continue
        try:
            out.add(normalise(host))
            continue
        except ValueError:
            pass
        now = time.monotonic()
        with _cache_lock:
            hit = _cache.get(host)
        if hit is not None and now - hit[0] < _RESOLVE_TTL:
            out |= hit[1]
            continue
        try:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
            found = frozenset(normalise(str(ai[4][0])) for ai in infos)
        except (OSError, ValueError) as err:
            log.warning("a source address does not resolve; connections from it will be refused",
                        extra=kv(host=host, error=err))
            continue
        with _cache_lock:
            _cache[host] = (now, found)
        out |= found
    return frozenset(out)
