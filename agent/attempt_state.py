"""What the agent holds for one running attempt, and the live figures read from it for health and metrics."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from zcrepl.agent.transfer.cancel import Cancel
from zcrepl.agent.transfer.receive import ReceiveSession
from zcrepl.agent.transfer.send import Sender
from zcrepl.core.logs import kv
from zcrepl.core.types import Role, TransferStats

log = logging.getLogger(__name__)

Key = tuple[int, int, Role]


def no_tls(host: str, role: str) -> str:
    """The sentence for an encrypted order reaching an agent that runs --insecure."""
    return (f"{host} has no TLS certificate (it runs --insecure), so it cannot {role} an encrypted transfer; "
            f"give it one (zc-agent --join TOKEN, or --ca/--cert/--key) or run the job without --encrypt")


@dataclass
class Active:
    role: Role
    cancel: Cancel = field(default_factory=Cancel)
    thread: threading.Thread | None = None
    session: ReceiveSession | None = None
    sender: Sender | None = None
    ended: threading.Event = field(default_factory=threading.Event)  # set once it no longer touches files


def ended(a: Active, key: Key) -> None:
    """The attempt no longer touches files here (logged: the kill-cycle tests check that no two attempts of a job
    overlap at a destination)."""
    a.ended.set()
    log.debug("attempt ended here", extra=kv(job=key[0], attempt=key[1], role=key[2].value))


def live_bytes(a: Active) -> int:
    return live_stats(a).bytes_done


def live_stats(a: Active) -> TransferStats:
    try:
        if a.sender is not None:
            return a.sender.snapshot()
        if a.session is not None and a.session.writer is not None:
            return a.session.stats()
    except Exception:  # a health figure must never break a transfer; count nothing for it this time
        log.debug("live transfer bytes unavailable", exc_info=True)
    return TransferStats()
