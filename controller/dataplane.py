"""The data plane's security as the controller decides it for each order: whether a transfer is encrypted,
and from which addresses its source agent may present the ticket.

Encryption: a job or rule that asked for it (``--encrypt``) is always encrypted. Otherwise the first match
decides: a per-link override in ``encrypt_links`` (``SRC>DST``, then ``SRC>*``, ``*>DST``, ``*>*``), then
``encrypt``: ``never``, ``always``, or ``cross-site`` (encrypt unless both agents carry the same non-empty
``site`` label). A site label is what an agent says of itself; a lying agent can only make its own transfers
plaintext, and it already holds the data it sends or receives.

Addresses: the one the source agent's controller stream comes from, the hosts of the gRPC and data addresses
it advertises, and the IPs it lists in ``source_addresses`` (multi-homed hosts). The receiver resolves names
among them and refuses a ticket presented from anywhere else.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from dataclasses import dataclass

from zcrepl.controller.registry import Registry
from zcrepl.core.config import MAX_SOURCE_ADDRESSES, ControllerConfig, parse_encrypt_links, split_address
from zcrepl.core.errors import ConfigError
from zcrepl.core.paths import valid_host_name

_WILDCARD = frozenset({"", "0.0.0.0", "::"})


@dataclass(frozen=True)
class Decision:
    encrypt: bool
    why: str  # for the explain history: "the job asked for it", "encrypt = cross-site: site a vs b", ...


class DataPlane:
    def __init__(self, config: ControllerConfig, registry: Registry) -> None:
        self.mode = config.encrypt
        self.links = parse_encrypt_links(config.encrypt_links)
        self.ticket_ttl = config.sync_ticket_ttl
        self.registry = registry

    def encrypt(self, src: str, dst: str, requested: bool) -> Decision:
        if requested:
            return Decision(True, "encrypted: the job asked for it (--encrypt)")
        for key in ((src, dst), (src, "*"), ("*", dst), ("*", "*")):
            if key in self.links:
                on = self.links[key]
                return Decision(on, f"{'encrypted' if on else 'plaintext'}: encrypt_links {key[0]}>{key[1]}")
        if self.mode == "always":
            return Decision(True, "encrypted: encrypt = always")
        if self.mode == "cross-site":
            a, b = self._site(src), self._site(dst)
            if a and a == b:
                return Decision(False, f"plaintext: encrypt = cross-site and both are in site {a}")
            return Decision(True, f"encrypted: encrypt = cross-site and the sites are {a or 'unset'} and "
                                  f"{b or 'unset'}")
        return Decision(False, "plaintext: encrypt = never")

    def source_addresses(self, name: str) -> tuple[str, ...]:
        """Where agent ``name`` may connect to a peer's data port from (see the module doc)."""
        rec = self.registry.agents.get(name)
        if rec is None:
            return ()
        found: list[str] = []
        if rec.session is not None:
            found.append(rec.session.peer_host)
        for addr in (rec.info.grpc_address, rec.info.data_address):
            try:
                found.append(split_address(addr)[0])
            except ConfigError:
                continue
        for extra in rec.info.source_addresses[:MAX_SOURCE_ADDRESSES]:
            try:
                found.append(str(ipaddress.ip_address(extra)))
            except ValueError:
                continue  # only IP literals: the agent's config checks them, a peer's list is not trusted further
        return tuple(dict.fromkeys(h for h in found if h not in _WILDCARD))

    def _site(self, name: str) -> str:
        """The agent's site label; one that is not a plain label (it came off the wire) counts as unset."""
        rec = self.registry.agents.get(name)
        site = rec.info.site if rec is not None else ""
        return site if valid_host_name(site) else ""


def peer_host(peer: str) -> str:
    """The host of a gRPC peer string (``ipv4:10.0.0.5:41234``, ``ipv6:[::1]:5000``); "" for anything else."""
    kind, _, rest = urllib.parse.unquote(peer).partition(":")
    if kind not in ("ipv4", "ipv6"):
        return ""
    host = rest.rpartition(":")[0].strip("[]")
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return ""
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return str(mapped or ip)  # a dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d
