"""Domain types shared by agent, controller and zc-ctl.

Frozen dataclasses, free of gRPC: generated protobuf types stop at the adapters in ``zcrepl.proto``.
Paths are ``bytes`` everywhere: any name Linux allows must survive, non-UTF-8 included.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

# Defined apart so zc-ctl's parser needs no dataclass; re-exported here, where everything else takes them from.
from zcrepl.core.enums import MAX_COMPRESS_LEVEL as MAX_COMPRESS_LEVEL
from zcrepl.core.enums import Compress as Compress
from zcrepl.core.enums import Durability as Durability
from zcrepl.core.enums import JobState as JobState
from zcrepl.core.enums import Priority as Priority

if TYPE_CHECKING:
    # Defined in core/ordertypes.py and read from here on first use (``__getattr__`` below).
    from zcrepl.core.ordertypes import CancelOrder as CancelOrder
    from zcrepl.core.ordertypes import ReceiveOrder as ReceiveOrder
    from zcrepl.core.ordertypes import SendOrder as SendOrder
    from zcrepl.core.ordertypes import ThrottleOrder as ThrottleOrder
    from zcrepl.core.ordertypes import TransferReport as TransferReport


@dataclass(frozen=True)
class Endpoint:
    """``host:/path`` as the operator wrote it; ``path`` is absolute."""

    host: str
    path: bytes

    def __str__(self) -> str:
        """``host:/path`` as the operator reads it (undecodable bytes shown escaped)."""
        from zcrepl.core.paths import show

        return f"{self.host}:{show(self.path)}"


@dataclass(frozen=True)
class JobOptions:
    delete: bool = False
    checksum: bool = False
    bwlimit: int = 0  # bytes/s the sender may push; 0 = unlimited
    max_attempts: int = 0  # 0 = the controller's default
    streams: int = 0  # parallel data connections; 0 = chosen from both ends' cores
    durability: Durability = Durability.JOB
    xattrs: bool = False  # replicate extended attributes too
    priority: Priority = Priority.NORMAL
    # TLS 1.3 on the data connections. On a submission: the operator asked for it (--encrypt); in an order:
    # the controller's decision (the job's request or its encrypt policy for the link).
    encrypt: bool = False
    # rsync's include/exclude rules in order, each "- PATTERN" or "+ PATTERN" (zcrepl.core.filters); the
    # source's .zcignore adds its rules after these. With delete, excluded destination entries are kept
    # unless delete_excluded.
    filters: tuple[str, ...] = ()
    delete_excluded: bool = False
    # rsync -n: the destination compares and reports what it would change (TransferReport.plan), changing nothing.
    dry_run: bool = False
    # rsync --backup --backup-dir: where the destination keeps the previous version of what a run overwrites or
    # deletes (relative path kept); a path on the destination host, absolute or relative to the job's root.
    backup_dir: bytes = b""
    # rsync --link-dest: directories on the destination host (absolute or relative to the job's root) a file
    # unchanged against is hard-linked from instead of sent; at most MAX_LINK_DEST.
    link_dest: tuple[bytes, ...] = ()
    # zstd on the data connections (slow links): a submission's --compress / --no-compress, or AUTO for the
    # controller's per-link decision; an order carries that decision (ON or OFF). Level 0 = the default (3).
    compress: Compress = Compress.AUTO
    compress_level: int = 0
    # zc-ctl snapshot: the destination is a snapshots directory. The job writes a hidden in-progress directory
    # there, linked against the newest complete snapshot, renamed to ``snapshot_name`` when done; then the
    # snapshots are pruned by the keep_* counts (0 each: all are kept). See zcrepl.core.snapshots.
    snapshot: bool = False
    # Set by the controller when it creates the job, from its clock (a client's value is replaced): the UTC
    # timestamp the snapshot is named after, e.g. "2026-11-30T020000Z".
    snapshot_name: str = ""
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0


MAX_LINK_DEST = 20
"""--link-dest directories one job may name (rsync's limit)."""


@dataclass(frozen=True)
class TransferStats:
    """Counters of one attempt; totals grow while the scan runs (``scan_done`` False)."""

    entries: int = 0
    files_total: int = 0
    files_done: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    files_skipped: int = 0
    deleted: int = 0
    wire_bytes: int = 0
    skipped_special: int = 0  # devices, FIFOs and sockets (also counted in entries_skipped)
    errors: int = 0
    scan_done: bool = False
    # Entries not replicated for any reason; a job that ends with some is "done with N skipped".
    entries_skipped: int = 0
    transport: str = ""  # how the bytes travelled: "none" (plaintext), "tls" or "ktls"; "" = not known yet
    # Regular files that should have been copied and were not (the source could not read them, or they changed
    # while read); a job that ends with some is "done with N errors". Apart from entries_skipped.
    file_errors: int = 0
    # A dry run's totals (the destination's plan, all of it; the listed items are capped at PLAN_LISTED).
    plan_created: int = 0
    plan_updated: int = 0
    plan_deleted: int = 0
    plan_files: int = 0  # files whose content would be sent
    plan_bytes: int = 0  # their bytes
    linked: int = 0  # files hard-linked from a --link-dest directory instead of sent
    backed_up: int = 0  # previous versions moved into the --backup-dir
    pruned: int = 0  # snapshots removed by the retention counts after this one was made (zc-ctl snapshot)


SKIPPED_LISTED = 100
"""How many skipped entries (and as many file errors) a transfer reports and a job keeps by name; the totals
are always counted."""


PLAN_LISTED = 1000
"""How many items of a dry run's plan a transfer reports and a job keeps (at most PLAN_LISTED_BYTES of paths
between them); the totals in TransferStats count them all."""
PLAN_LISTED_BYTES = 1 << 20


@dataclass(frozen=True)
class PlanItem:
    """One change a dry run found: ``change`` is "created", "updated" or "deleted"; ``kind`` "file", "dir",
    "symlink" or "hardlink"; ``why`` (updates) the differences among "size", "mtime", "content", "mode",
    "target", "owner"; ``size`` the bytes that would move for it (0 for metadata-only changes)."""

    path: bytes
    change: str
    kind: str
    why: tuple[str, ...] = ()
    size: int = 0
    target: bytes = b""  # a symlink's new target


@dataclass(frozen=True)
class Skipped:
    """One entry a transfer left out: its path below the job's root, and why (one sentence). ``error``: a file
    that should have been copied and was not (unreadable, changed while read), not one left out on purpose."""

    path: bytes
    reason: str
    error: bool = False


@dataclass(frozen=True)
class DiskUsage:
    path: bytes
    total: int
    used: int
    free: int
    percent: float
    device: str = ""  # the block device behind the export, as named in HostHealth.disks; "" = unknown


@dataclass(frozen=True)
class DiskIO:
    device: str
    read_bps: float
    write_bps: float
    busy_percent: float


@dataclass(frozen=True)
class NetIO:
    interface: str
    recv_bps: float
    sent_bps: float
    speed_mbps: int


@dataclass(frozen=True)
class HostHealth:
    """One psutil sample of a host; rates come from counter deltas over the sampling interval."""

    sampled_at: float = 0.0
    cpu_percent: float = 0.0
    cpu_per_core: tuple[float, ...] = ()
    cpu_count: int = 0
    load1: float = 0.0
    load5: float = 0.0
    load15: float = 0.0
    mem_total: int = 0
    mem_available: int = 0
    swap_in_bps: float = 0.0
    swap_out_bps: float = 0.0
    exports: tuple[DiskUsage, ...] = ()
    disk_read_bps: float = 0.0
    disk_write_bps: float = 0.0
    disks: tuple[DiskIO, ...] = ()
    net_recv_bps: float = 0.0
    net_sent_bps: float = 0.0
    nics: tuple[NetIO, ...] = ()
    open_fds: int = 0
    agent_cpu_percent: float = 0.0
    agent_rss: int = 0
    active_transfers: int = 0
    transfer_bps: float = 0.0  # file bytes/s moved by the agent's transfers (sent and received)
    # Inotify watches in use by the agent's user (all its processes: the limit is per user) and the
    # kernel's per-user limit (fs.inotify.max_user_watches); 0 = unknown. Headroom is the difference.
    inotify_watches_used: int = 0
    inotify_watches_max: int = 0
    data_nic: str = ""  # the interface holding the agent's data address (what peers connect to); "" = unknown


@dataclass(frozen=True)
class AgentInfo:
    name: str
    grpc_address: str = ""
    data_address: str = ""
    exports: tuple[bytes, ...] = ()
    version: str = ""
    pid: int = 0
    hostname: str = ""
    site: str = ""  # the agent's site label (its config); the controller's cross-site encrypt policy reads it
    # Further addresses this agent's data connections may come from (multi-homed hosts; IP literals).
    source_addresses: tuple[str, ...] = ()
    # Bytes/s one of its cores compresses text-like data with zstd at the default level, measured at start-up;
    # 0: an agent without compression (an older one), never ordered to compress or to receive compressed bytes.
    compress_bps: int = 0


@dataclass(frozen=True)
class AgentStatus:
    info: AgentInfo
    online: bool = False
    last_seen: float = 0.0
    connected_at: float = 0.0
    health: HostHealth | None = None
    running_jobs: int = 0
    history: tuple[HostHealth, ...] = ()  # recent samples, oldest first (only when asked for)


@dataclass(frozen=True)
class Attempt:
    number: int
    started_at: float
    ended_at: float = 0.0
    error: str = ""
    stats: TransferStats = field(default_factory=TransferStats)
    source: bytes = b""  # "host:/path" read from in this attempt


@dataclass(frozen=True)
class Job:
    id: int
    state: JobState
    source: Endpoint
    destination: Endpoint
    options: JobOptions = field(default_factory=JobOptions)
    created_at: float = 0.0
    updated_at: float = 0.0
    started_at: float = 0.0
    finished_at: float = 0.0
    attempts: int = 0
    max_attempts: int = 0
    error: str = ""
    wait_reason: str = ""
    progress: TransferStats = field(default_factory=TransferStats)
    history: tuple[Attempt, ...] = ()
    next_attempt_at: float = 0.0
    # Attempts that failed for their own reasons; the retry budget. Interrupted attempts (the
    # controller restarted) don't count.
    failures: int = 0
    group_id: int = 0  # the fan-out this job belongs to (id of its first job), 0 for none
    # Entries the latest attempt left out (the first SKIPPED_LISTED; progress.entries_skipped counts all).
    skipped: tuple[Skipped, ...] = ()
    plan: tuple[PlanItem, ...] = ()  # a dry run's changes (the first PLAN_LISTED; progress.plan_* counts all)
    schedule_id: int = 0  # the schedule that queued this job, 0 for none

    @property
    def done_with_skips(self) -> bool:
        return self.state is JobState.DONE and self.progress.entries_skipped > 0

    @property
    def done_with_errors(self) -> bool:
        return self.state is JobState.DONE and self.progress.file_errors > 0


class Role(enum.Enum):
    SENDER = "sender"
    RECEIVER = "receiver"


class Phase(enum.Enum):
    READY = "ready"
    PROGRESS = "progress"
    DONE = "done"
    FAILED = "failed"


_ORDER_TYPES = frozenset({"CancelOrder", "ReceiveOrder", "SendOrder", "ThrottleOrder", "TransferReport"})

if not TYPE_CHECKING:  # (mypy reads the imports above instead, and keeps refusing names this module lacks)

    def __getattr__(name: str) -> type:
        """The orders and the report of the agents' stream, made in core/ordertypes.py when first asked for
        here: zc-ctl never uses them, and each frozen dataclass costs ~0.4 ms of its start to make."""
        if name in _ORDER_TYPES:
            from zcrepl.core import ordertypes

            return getattr(ordertypes, name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
