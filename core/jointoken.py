"""Join tokens: ``zcj1.PORT.CAHASH.SECRET``.

PORT is the controller's enrolment port, CAHASH the SHA-256 (hex) of the cluster CA certificate the agent must
find at the other end before it trusts anything (so nobody in the middle can enrol it into another cluster),
SECRET 256 random bits, stored by the controller only as a hash, usable once and until it expires.
"""

from __future__ import annotations

import re

from zcrepl.core.errors import UserError

PREFIX = "zcj1"
_TOKEN = re.compile(r"zcj1\.(?P<port>[0-9]{1,5})\.(?P<pin>[0-9a-f]{64})\.(?P<secret>[A-Za-z0-9_-]{43})")


def make(port: int, pin: str, secret: str) -> str:
    return f"{PREFIX}.{port}.{pin}.{secret}"


def parse(token: str) -> tuple[int, str, str]:
    """(enrolment port, CA fingerprint, secret); UserError for anything else."""
    m = _TOKEN.fullmatch(token.strip())
    if m is None or not 0 < int(m["port"]) < 65536:
        raise UserError("that is not a zcrepl join token (zcj1.PORT.CAHASH.SECRET); copy the whole line printed by "
                        "zc-ctl token create")
    return int(m["port"]), m["pin"], m["secret"]
