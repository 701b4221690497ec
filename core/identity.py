"""Who a certificate names: the zcrepl SAN URI and the identity it carries (no cryptography imported here, so
clients that only pass certificate files to gRPC start fast).

::

    zcrepl://controller/NAME           a controller (also carries DNS SAN ``controller.zcrepl``)
    zcrepl://agent/NAME                an agent (also carries DNS SAN ``agent.zcrepl``)
    zcrepl://operator/NAME?role=ROLE   a person or script; ROLE is read, operator or admin
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from zcrepl.core.paths import valid_host_name
from zcrepl.core.wellknown import AGENT_DNS as AGENT_DNS  # re-exported: pki and the tests take them from here
from zcrepl.core.wellknown import CONTROLLER_DNS as CONTROLLER_DNS
from zcrepl.core.wellknown import KINDS as KINDS
from zcrepl.core.wellknown import ROLES as ROLES

SCHEME = "zcrepl"
_URI = re.compile(r"zcrepl://(?P<kind>controller|agent|operator)/(?P<name>[^/?#]+)(?:\?role=(?P<role>read|operator|admin))?")


@dataclass(frozen=True)
class Identity:
    """Who a certificate says its holder is."""

    kind: str  # controller | agent | operator
    name: str
    role: str = ""  # operators only
    serial: int = 0
    not_after: float = 0.0  # POSIX seconds

    @property
    def uri(self) -> str:
        return identity_uri(self.kind, self.name, self.role)

    def __str__(self) -> str:
        return f"{self.kind} {self.name}" + (f" ({self.role})" if self.role else "")


def identity_uri(kind: str, name: str, role: str = "") -> str:
    return f"{SCHEME}://{kind}/{name}" + (f"?role={role}" if role else "")


def parse_identity_uri(uri: str) -> tuple[str, str, str] | None:
    """``zcrepl://operator/alice?role=admin`` -> ("operator", "alice", "admin"); None when not ours or malformed."""
    m = _URI.fullmatch(uri)
    if m is None or not valid_host_name(m["name"]):
        return None
    kind, role = m["kind"], m["role"] or ""
    if (kind == "operator") != bool(role):
        return None
    return kind, m["name"], role
