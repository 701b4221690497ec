"""Domain types of continuous replication (watch rules), shared by agent, controller and zc-ctl."""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields

from zcrepl.core.types import Endpoint, JobOptions

SYNC_ID_BASE = 1 << 48
"""Data-plane job ids of watch rules are ``SYNC_ID_BASE + rule id``: far above any job id, so the tickets of
a rule and of a job can never be confused on an agent."""

DEFAULT_WINDOW = 0.05
DEFAULT_QUIET = 0.2


def sync_options(o: JobOptions) -> JobOptions:
    """A watch rule mirrors: what the source deletes goes at the destination too (lsyncd does the same);
    what its filters exclude stays at the destination unless delete_excluded."""
    return JobOptions(delete=True, checksum=o.checksum, bwlimit=o.bwlimit, streams=o.streams,
                      durability=o.durability, xattrs=o.xattrs, encrypt=o.encrypt, filters=o.filters,
                      delete_excluded=o.delete_excluded)


class SyncState(enum.Enum):
    ACTIVE = "active"
    PAUSED = "paused"


class SyncPhase(enum.Enum):
    """Where a rule is now, as the controller sees it (``SyncRule.status`` is the sentence that goes with it)."""

    STARTING = "starting"  # deployed, no report from the source yet
    RECONCILING = "reconciling"  # a full scan is shipping
    WATCHING = "watching"  # changes ship as they happen
    HELD = "held"  # the load policy holds it; changes are collected
    WAITING = "waiting"  # an agent of the rule is offline
    FAILED = "failed"  # the source's watcher stopped on an error
    PAUSED = "paused"  # by the operator
    REMOVED = "removed"

    @property
    def settled(self) -> bool:
        """No longer on its way to watching: an operator waiting for the first scan can stop waiting."""
        return self in (SyncPhase.HELD, SyncPhase.WAITING, SyncPhase.FAILED, SyncPhase.PAUSED, SyncPhase.REMOVED)


@dataclass(frozen=True)
class SyncCounters:
    sessions: int = 0  # change sets shipped (per destination)
    changes: int = 0  # items in them (upserts + deletes + renames)
    files: int = 0  # files whose content moved
    bytes: int = 0
    deleted: int = 0
    renamed: int = 0
    reconciles: int = 0  # full scans (rule start, restart, overflow, error)
    errors: int = 0
    skipped: int = 0  # entries left out of shipped sets (special files, unreadable...)

    def plus(self, other: SyncCounters) -> SyncCounters:
        return SyncCounters(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


@dataclass(frozen=True)
class SyncStatus:
    """What the source agent reports for one rule with each heartbeat."""

    rule_id: int
    epoch: int
    watching: bool = False
    lag: float = 0.0  # age (s) of the oldest change not yet at every destination
    pending: int = 0  # changes seen, not yet at every destination
    held: bool = False
    reconciling: bool = False
    counters: SyncCounters = SyncCounters()
    last_error: str = ""
    last_error_at: float = 0.0  # wall clock
    last_shipped_at: float = 0.0  # wall clock
    warning: str = ""  # e.g. the inotify watch limit was hit


@dataclass(frozen=True)
class SyncRule:
    id: int
    source: Endpoint
    destinations: tuple[Endpoint, ...]
    options: JobOptions
    state: SyncState = SyncState.ACTIVE
    created_at: float = 0.0
    window: float = DEFAULT_WINDOW
    quiet: float = DEFAULT_QUIET
    counters: SyncCounters = SyncCounters()  # totals over the rule's life
    # Live, from the controller's view (not stored): the phase, and the sentence that goes with it
    # ("watching", "held: hostB CPU 93% busy", "failed: <error>").
    phase: SyncPhase = SyncPhase.STARTING
    status: str = ""
    lag: float = 0.0
    pending: int = 0
    last_error: str = ""
    last_error_at: float = 0.0
    last_shipped_at: float = 0.0


@dataclass(frozen=True)
class SyncDest:
    host: str
    data_address: str
    ticket: bytes
    path: bytes
    encrypt: bool = False  # TLS on this destination's connections (the controller's decision per link)


@dataclass(frozen=True)
class SyncSourceOrder:
    """Start (or restart, with a new epoch) watching ``path`` and shipping to ``dests``."""

    rule_id: int
    epoch: int
    path: bytes
    options: JobOptions
    window: float
    quiet: float
    dests: tuple[SyncDest, ...]
    held: bool = False
    hold_reason: str = ""


@dataclass(frozen=True)
class SyncDestOrder:
    """Accept this rule's sessions into ``path`` with ``ticket`` for ``ticket_ttl`` seconds (0: until
    replaced). A new epoch replaces the rule's earlier tickets; the same epoch adds a rotated ticket and
    leaves the previous one to expire on its own (the overlap while the source switches)."""

    rule_id: int
    epoch: int
    path: bytes
    options: JobOptions
    ticket: bytes
    source_host: str
    source_addresses: tuple[str, ...] = ()  # where the source may connect from (see ReceiveOrder)
    ticket_ttl: float = 0.0


@dataclass(frozen=True)
class SyncTicketOrder:
    """A rotated ticket for one destination of a running rule: the source uses it from its next session on
    (same epoch, so no reconciliation), keeping the previous one as a fallback until a session is accepted."""

    rule_id: int
    epoch: int
    host: str
    ticket: bytes


@dataclass(frozen=True)
class SyncStopOrder:
    rule_id: int
    reason: str = ""


@dataclass(frozen=True)
class SyncHoldOrder:
    """The load policy: keep collecting changes but ship none until released."""

    rule_id: int
    epoch: int
    held: bool
    reason: str = ""
