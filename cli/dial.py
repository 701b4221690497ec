"""The controller list of ``--controller`` and the first connection to it, started before the command's modules load.

Imports gRPC and the channel settings only (no protobuf descriptors, no domain types): ``ctl.main`` calls
:func:`connect_early` right after parsing, so the TCP and TLS handshakes and HTTP/2's settings exchange run on
gRPC's own threads while ``ctl_commands`` loads, instead of after it, when the first call needs the connection.
"""

from __future__ import annotations

import grpc

from zcrepl.core.trust import Trust
from zcrepl.proto.channels import channel


def targets(target: str) -> list[str]:
    """``a:7420,b:7420``: the controllers to try, in order (``target`` itself when it lists none)."""
    return [t.strip() for t in target.split(",") if t.strip()] or [target]


def connect_early(target: str, trust: Trust | None) -> grpc.Channel:
    """A channel to ``target`` that is already connecting. gRPC connects lazily, at the first call; asking the
    core channel for its state with ``try_to_connect`` starts it now. Not ``subscribe(..., try_to_connect=True)``:
    that leaves a polling thread behind, which raises when the channel closes under it. A failure to connect shows
    at the first call, as before; a gRPC without the core channel attribute just connects at the first call."""
    ch = channel(target, trust)
    core = getattr(ch, "_channel", None)
    if core is not None and hasattr(core, "check_connectivity_state"):
        core.check_connectivity_state(True)
    return ch
