"""What the controller orders an agent to do for one attempt, and what the agent reports back: the job types of
the agents' stream (``core/orders.py`` names their union). Shared by agent and controller; also read from
``zcrepl.core.types``, where they were first defined, so zc-ctl, which imports that module, does not make them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from zcrepl.core.types import JobOptions, Phase, PlanItem, Role, Skipped, TransferStats


@dataclass(frozen=True)
class TransferReport:
    """What an agent says about its side of one attempt."""

    job_id: int
    attempt: int
    role: Role
    phase: Phase
    stats: TransferStats = field(default_factory=TransferStats)
    error: str = ""
    retryable: bool = True
    skipped: tuple[Skipped, ...] = ()  # entries this side left out (the first SKIPPED_LISTED)
    plan: tuple[PlanItem, ...] = ()  # the receiver's dry-run plan (the first PLAN_LISTED)


@dataclass(frozen=True)
class ReceiveOrder:
    job_id: int
    attempt: int
    ticket: bytes
    path: bytes
    options: JobOptions
    source_host: str
    # Where the source agent may connect from (its controller stream's address, its advertised hosts, its
    # source_addresses); empty = unbound (an older controller).
    source_addresses: tuple[str, ...] = ()


@dataclass(frozen=True)
class SendOrder:
    job_id: int
    attempt: int
    ticket: bytes
    path: bytes
    options: JobOptions
    dest_host: str
    dest_data_address: str
    dest_path: bytes


@dataclass(frozen=True)
class ThrottleOrder:
    job_id: int
    attempt: int
    bwlimit: int = 0  # bytes/s; 0 = no cap beyond the job's own bwlimit
    paused: bool = False
    reason: str = ""


@dataclass(frozen=True)
class CancelOrder:
    job_id: int
    attempt: int
    reason: str = ""
    discard_partial: bool = False
