"""Constants that every part agrees on and a command line needs before it does anything: the default ports
and controller address, and the identity kinds and roles.

Importable with nothing else (no dataclasses, no config machinery), so ``zc-ctl --help`` builds its parser
without loading what the commands use.
"""

from __future__ import annotations

DEFAULT_CONTROLLER_PORT = 7420
DEFAULT_AGENT_PORT = 7421
DEFAULT_DATA_PORT = 7422
DEFAULT_ENROLL_PORT = 7423
DEFAULT_CONTROLLER = f"127.0.0.1:{DEFAULT_CONTROLLER_PORT}"

KINDS = ("controller", "agent", "operator")
# The DNS names in the SANs of controller and agent certificates, which a client checks whatever address it
# dialled (core/identity.py re-exports them; zc-ctl's channel takes them from here, without the identity types).
CONTROLLER_DNS = "controller.zcrepl"
AGENT_DNS = "agent.zcrepl"
ROLES = ("read", "operator", "admin")
