"""Domain types of continuous replication (watch rules), shared by agent, controller and zc-ctl."""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields

from zcrepl.core.types import Endpoint, JobOptions

WATCH_ID_BASE = 1 << 48
"""Data-plane job ids of watch rules are ``WATCH_ID_BASE + rule id``: far above any job id, so the tickets of
a rule and of a job can never be confused on an agent."""

DEFAULT_WINDOW = 0.05
DEFAULT_QUIET = 0.2


def watch_options(o: JobOptions) -> JobOptions:
    """A watch rule mirrors: what the source deletes goes at the destination too (lsyncd does the same);
    what its filters exclude stays at the destination unless delete_excluded."""
    return JobOptions(delete=True, checksum=o.checksum, bwlimit=o.bwlimit, streams=o.streams,
                      durability=o.durability, xattrs=o.xattrs, encrypt=o.encrypt, filters=o.filters,
                      delete_excluded=o.delete_excluded)


class WatchState(enum.Enum):
    ACTIVE = "active"
    PAUSED = "paused"


class WatchPhase(enum.Enum):
    """Where a rule is now, as the controller sees it (``WatchRule.status`` is the sentence that goes with it)."""

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
        return self in (WatchPhase.HELD, WatchPhase.WAITING, WatchPhase.FAILED, WatchPhase.PAUSED, WatchPhase.REMOVED)


@dataclass(frozen=True)
class WatchCounters:
    sessions: int = 0  # change sets shipped (per destination)
    changes: int = 0  # items in them (upserts + deletes + renames)
    files: int = 0  # files whose content moved
    bytes: int = 0
    deleted: int = 0
    renamed: int = 0
    reconciles: int = 0  # full scans (rule start, restart, overflow, error)
    errors: int = 0
    skipped: int = 0  # entries left out of shipped sets (special files, unreadable...)

    def plus(self, other: WatchCounters) -> WatchCounters:
        return WatchCounters(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


@dataclass(frozen=True)
class WatchStatus:
    """What the source agent reports for one rule with each heartbeat."""

    rule_id: int
    epoch: int
    watching: bool = False
    lag: float = 0.0  # age (s) of the oldest change not yet at every destination
    pending: int = 0  # changes seen, not yet at every destination
    held: bool = False
    reconciling: bool = False
    counters: WatchCounters = WatchCounters()
    last_error: str = ""
    last_error_at: float = 0.0  # wall clock
    last_shipped_at: float = 0.0  # wall clock
    warning: str = ""  # e.g. the inotify watch limit was hit


@dataclass(frozen=True)
class WatchRule:
    id: int
    source: Endpoint
    destinations: tuple[Endpoint, ...]
    options: JobOptions
    state: WatchState = WatchState.ACTIVE
    created_at: float = 0.0
    window: float = DEFAULT_WINDOW
    quiet: float = DEFAULT_QUIET
    counters: WatchCounters = WatchCounters()  # totals over the rule's life
    # Live, from the controller's view (not stored): the phase, and the sentence that goes with it
    # ("watching", "held: hostB CPU 93% busy", "failed: <error>").
    phase: WatchPhase = WatchPhase.STARTING
    status: str = ""
    lag: float = 0.0
    pending: int = 0
    last_error: str = ""
    last_error_at: float = 0.0
    last_shipped_at: float = 0.0


@dataclass(frozen=True)
class WatchDest:
    host: str
    data_address: str
    ticket: bytes
    path: bytes
    encrypt: bool = False  # TLS on this destination's connections (the controller's decision per link)


@dataclass(frozen=True)
class WatchSourceOrder:
    """Start (or restart, with a new epoch) watching ``path`` and shipping to ``dests``."""

    rule_id: int
    epoch: int
    path: bytes
    options: JobOptions
    window: float
    quiet: float
    dests: tuple[WatchDest, ...]
    held: bool = False
    hold_reason: str = ""


@dataclass(frozen=True)
class WatchDestOrder:
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
class WatchTicketOrder:
    """A rotated ticket for one destination of a running rule: the source uses it from its next session on
    (same epoch, so no reconciliation), keeping the previous one as a fallback until a session is accepted."""

    rule_id: int
    epoch: int
    host: str
    ticket: bytes


@dataclass(frozen=True)
class WatchStopOrder:
    rule_id: int
    reason: str = ""


@dataclass(frozen=True)
class WatchHoldOrder:
    """The load policy: keep collecting changes but ship none until released."""

    rule_id: int
    epoch: int
    held: bool
    reason: str = ""
