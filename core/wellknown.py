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
ROLES = ("read", "operator", "admin")
