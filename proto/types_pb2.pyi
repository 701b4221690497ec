from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_DONE: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]

class Durability(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DURABILITY_UNSPECIFIED: _ClassVar[Durability]
    DURABILITY_JOB: _ClassVar[Durability]
    DURABILITY_FILE: _ClassVar[Durability]
    DURABILITY_NONE: _ClassVar[Durability]

class Priority(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRIORITY_UNSPECIFIED: _ClassVar[Priority]
    PRIORITY_LOW: _ClassVar[Priority]
    PRIORITY_NORMAL: _ClassVar[Priority]
    PRIORITY_HIGH: _ClassVar[Priority]
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_DONE: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState
DURABILITY_UNSPECIFIED: Durability
DURABILITY_JOB: Durability
DURABILITY_FILE: Durability
DURABILITY_NONE: Durability
PRIORITY_UNSPECIFIED: Priority
PRIORITY_LOW: Priority
PRIORITY_NORMAL: Priority
PRIORITY_HIGH: Priority

class DiskUsage(_message.Message):
    __slots__ = ("path", "total", "used", "free", "percent", "device")
    PATH_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    FREE_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    path: bytes
    total: int
    used: int
    free: int
    percent: float
    device: str
    def __init__(self, path: _Optional[bytes] = ..., total: _Optional[int] = ..., used: _Optional[int] = ..., free: _Optional[int] = ..., percent: _Optional[float] = ..., device: _Optional[str] = ...) -> None: ...

class DiskIO(_message.Message):
    __slots__ = ("device", "read_bps", "write_bps", "busy_percent")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    READ_BPS_FIELD_NUMBER: _ClassVar[int]
    WRITE_BPS_FIELD_NUMBER: _ClassVar[int]
    BUSY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    device: str
    read_bps: float
    write_bps: float
    busy_percent: float
    def __init__(self, device: _Optional[str] = ..., read_bps: _Optional[float] = ..., write_bps: _Optional[float] = ..., busy_percent: _Optional[float] = ...) -> None: ...

class NetIO(_message.Message):
    __slots__ = ("interface", "recv_bps", "sent_bps", "speed_mbps")
    INTERFACE_FIELD_NUMBER: _ClassVar[int]
    RECV_BPS_FIELD_NUMBER: _ClassVar[int]
    SENT_BPS_FIELD_NUMBER: _ClassVar[int]
    SPEED_MBPS_FIELD_NUMBER: _ClassVar[int]
    interface: str
    recv_bps: float
    sent_bps: float
    speed_mbps: int
    def __init__(self, interface: _Optional[str] = ..., recv_bps: _Optional[float] = ..., sent_bps: _Optional[float] = ..., speed_mbps: _Optional[int] = ...) -> None: ...

class HostHealth(_message.Message):
    __slots__ = ("sampled_at", "cpu_percent", "cpu_per_core", "cpu_count", "load1", "load5", "load15", "mem_total", "mem_available", "swap_in_bps", "swap_out_bps", "exports", "disk_read_bps", "disk_write_bps", "disks", "net_recv_bps", "net_sent_bps", "nics", "open_fds", "agent_cpu_percent", "agent_rss", "active_transfers", "transfer_bps", "inotify_watches_used", "inotify_watches_max", "data_nic")
    SAMPLED_AT_FIELD_NUMBER: _ClassVar[int]
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    CPU_PER_CORE_FIELD_NUMBER: _ClassVar[int]
    CPU_COUNT_FIELD_NUMBER: _ClassVar[int]
    LOAD1_FIELD_NUMBER: _ClassVar[int]
    LOAD5_FIELD_NUMBER: _ClassVar[int]
    LOAD15_FIELD_NUMBER: _ClassVar[int]
    MEM_TOTAL_FIELD_NUMBER: _ClassVar[int]
    MEM_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    SWAP_IN_BPS_FIELD_NUMBER: _ClassVar[int]
    SWAP_OUT_BPS_FIELD_NUMBER: _ClassVar[int]
    EXPORTS_FIELD_NUMBER: _ClassVar[int]
    DISK_READ_BPS_FIELD_NUMBER: _ClassVar[int]
    DISK_WRITE_BPS_FIELD_NUMBER: _ClassVar[int]
    DISKS_FIELD_NUMBER: _ClassVar[int]
    NET_RECV_BPS_FIELD_NUMBER: _ClassVar[int]
    NET_SENT_BPS_FIELD_NUMBER: _ClassVar[int]
    NICS_FIELD_NUMBER: _ClassVar[int]
    OPEN_FDS_FIELD_NUMBER: _ClassVar[int]
    AGENT_CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    AGENT_RSS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_TRANSFERS_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_BPS_FIELD_NUMBER: _ClassVar[int]
    INOTIFY_WATCHES_USED_FIELD_NUMBER: _ClassVar[int]
    INOTIFY_WATCHES_MAX_FIELD_NUMBER: _ClassVar[int]
    DATA_NIC_FIELD_NUMBER: _ClassVar[int]
    sampled_at: float
    cpu_percent: float
    cpu_per_core: _containers.RepeatedScalarFieldContainer[float]
    cpu_count: int
    load1: float
    load5: float
    load15: float
    mem_total: int
    mem_available: int
    swap_in_bps: float
    swap_out_bps: float
    exports: _containers.RepeatedCompositeFieldContainer[DiskUsage]
    disk_read_bps: float
    disk_write_bps: float
    disks: _containers.RepeatedCompositeFieldContainer[DiskIO]
    net_recv_bps: float
    net_sent_bps: float
    nics: _containers.RepeatedCompositeFieldContainer[NetIO]
    open_fds: int
    agent_cpu_percent: float
    agent_rss: int
    active_transfers: int
    transfer_bps: float
    inotify_watches_used: int
    inotify_watches_max: int
    data_nic: str
    def __init__(self, sampled_at: _Optional[float] = ..., cpu_percent: _Optional[float] = ..., cpu_per_core: _Optional[_Iterable[float]] = ..., cpu_count: _Optional[int] = ..., load1: _Optional[float] = ..., load5: _Optional[float] = ..., load15: _Optional[float] = ..., mem_total: _Optional[int] = ..., mem_available: _Optional[int] = ..., swap_in_bps: _Optional[float] = ..., swap_out_bps: _Optional[float] = ..., exports: _Optional[_Iterable[_Union[DiskUsage, _Mapping]]] = ..., disk_read_bps: _Optional[float] = ..., disk_write_bps: _Optional[float] = ..., disks: _Optional[_Iterable[_Union[DiskIO, _Mapping]]] = ..., net_recv_bps: _Optional[float] = ..., net_sent_bps: _Optional[float] = ..., nics: _Optional[_Iterable[_Union[NetIO, _Mapping]]] = ..., open_fds: _Optional[int] = ..., agent_cpu_percent: _Optional[float] = ..., agent_rss: _Optional[int] = ..., active_transfers: _Optional[int] = ..., transfer_bps: _Optional[float] = ..., inotify_watches_used: _Optional[int] = ..., inotify_watches_max: _Optional[int] = ..., data_nic: _Optional[str] = ...) -> None: ...

class AgentInfo(_message.Message):
    __slots__ = ("name", "grpc_address", "data_address", "exports", "version", "pid", "hostname", "site", "source_addresses", "compress_bps")
    NAME_FIELD_NUMBER: _ClassVar[int]
    GRPC_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    DATA_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    EXPORTS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    COMPRESS_BPS_FIELD_NUMBER: _ClassVar[int]
    name: str
    grpc_address: str
    data_address: str
    exports: _containers.RepeatedScalarFieldContainer[bytes]
    version: str
    pid: int
    hostname: str
    site: str
    source_addresses: _containers.RepeatedScalarFieldContainer[str]
    compress_bps: int
    def __init__(self, name: _Optional[str] = ..., grpc_address: _Optional[str] = ..., data_address: _Optional[str] = ..., exports: _Optional[_Iterable[bytes]] = ..., version: _Optional[str] = ..., pid: _Optional[int] = ..., hostname: _Optional[str] = ..., site: _Optional[str] = ..., source_addresses: _Optional[_Iterable[str]] = ..., compress_bps: _Optional[int] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("host", "path")
    HOST_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    host: str
    path: bytes
    def __init__(self, host: _Optional[str] = ..., path: _Optional[bytes] = ...) -> None: ...

class JobOptions(_message.Message):
    __slots__ = ("delete", "checksum", "bwlimit", "max_attempts", "streams", "durability", "xattrs", "priority", "encrypt", "filters", "delete_excluded", "dry_run", "backup_dir", "link_dest", "snapshot", "snapshot_name", "keep_daily", "keep_weekly", "keep_monthly", "compress", "compress_level")
    DELETE_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    BWLIMIT_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    STREAMS_FIELD_NUMBER: _ClassVar[int]
    DURABILITY_FIELD_NUMBER: _ClassVar[int]
    XATTRS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    ENCRYPT_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    DELETE_EXCLUDED_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    BACKUP_DIR_FIELD_NUMBER: _ClassVar[int]
    LINK_DEST_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_NAME_FIELD_NUMBER: _ClassVar[int]
    KEEP_DAILY_FIELD_NUMBER: _ClassVar[int]
    KEEP_WEEKLY_FIELD_NUMBER: _ClassVar[int]
    KEEP_MONTHLY_FIELD_NUMBER: _ClassVar[int]
    COMPRESS_FIELD_NUMBER: _ClassVar[int]
    COMPRESS_LEVEL_FIELD_NUMBER: _ClassVar[int]
    delete: bool
    checksum: bool
    bwlimit: int
    max_attempts: int
    streams: int
    durability: Durability
    xattrs: bool
    priority: Priority
    encrypt: bool
    filters: _containers.RepeatedScalarFieldContainer[str]
    delete_excluded: bool
    dry_run: bool
    backup_dir: bytes
    link_dest: _containers.RepeatedScalarFieldContainer[bytes]
    snapshot: bool
    snapshot_name: str
    keep_daily: int
    keep_weekly: int
    keep_monthly: int
    compress: int
    compress_level: int
    def __init__(self, delete: _Optional[bool] = ..., checksum: _Optional[bool] = ..., bwlimit: _Optional[int] = ..., max_attempts: _Optional[int] = ..., streams: _Optional[int] = ..., durability: _Optional[_Union[Durability, str]] = ..., xattrs: _Optional[bool] = ..., priority: _Optional[_Union[Priority, str]] = ..., encrypt: _Optional[bool] = ..., filters: _Optional[_Iterable[str]] = ..., delete_excluded: _Optional[bool] = ..., dry_run: _Optional[bool] = ..., backup_dir: _Optional[bytes] = ..., link_dest: _Optional[_Iterable[bytes]] = ..., snapshot: _Optional[bool] = ..., snapshot_name: _Optional[str] = ..., keep_daily: _Optional[int] = ..., keep_weekly: _Optional[int] = ..., keep_monthly: _Optional[int] = ..., compress: _Optional[int] = ..., compress_level: _Optional[int] = ...) -> None: ...

class TransferStats(_message.Message):
    __slots__ = ("entries", "files_total", "files_done", "bytes_total", "bytes_done", "files_skipped", "deleted", "wire_bytes", "skipped_special", "errors", "scan_done", "entries_skipped", "transport", "file_errors", "plan_created", "plan_updated", "plan_deleted", "plan_files", "plan_bytes", "linked", "backed_up", "pruned")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    FILES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    FILES_DONE_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    FILES_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    WIRE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_SPECIAL_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    SCAN_DONE_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    FILE_ERRORS_FIELD_NUMBER: _ClassVar[int]
    PLAN_CREATED_FIELD_NUMBER: _ClassVar[int]
    PLAN_UPDATED_FIELD_NUMBER: _ClassVar[int]
    PLAN_DELETED_FIELD_NUMBER: _ClassVar[int]
    PLAN_FILES_FIELD_NUMBER: _ClassVar[int]
    PLAN_BYTES_FIELD_NUMBER: _ClassVar[int]
    LINKED_FIELD_NUMBER: _ClassVar[int]
    BACKED_UP_FIELD_NUMBER: _ClassVar[int]
    PRUNED_FIELD_NUMBER: _ClassVar[int]
    entries: int
    files_total: int
    files_done: int
    bytes_total: int
    bytes_done: int
    files_skipped: int
    deleted: int
    wire_bytes: int
    skipped_special: int
    errors: int
    scan_done: bool
    entries_skipped: int
    transport: str
    file_errors: int
    plan_created: int
    plan_updated: int
    plan_deleted: int
    plan_files: int
    plan_bytes: int
    linked: int
    backed_up: int
    pruned: int
    def __init__(self, entries: _Optional[int] = ..., files_total: _Optional[int] = ..., files_done: _Optional[int] = ..., bytes_total: _Optional[int] = ..., bytes_done: _Optional[int] = ..., files_skipped: _Optional[int] = ..., deleted: _Optional[int] = ..., wire_bytes: _Optional[int] = ..., skipped_special: _Optional[int] = ..., errors: _Optional[int] = ..., scan_done: _Optional[bool] = ..., entries_skipped: _Optional[int] = ..., transport: _Optional[str] = ..., file_errors: _Optional[int] = ..., plan_created: _Optional[int] = ..., plan_updated: _Optional[int] = ..., plan_deleted: _Optional[int] = ..., plan_files: _Optional[int] = ..., plan_bytes: _Optional[int] = ..., linked: _Optional[int] = ..., backed_up: _Optional[int] = ..., pruned: _Optional[int] = ...) -> None: ...

class SkippedEntry(_message.Message):
    __slots__ = ("path", "reason", "error")
    PATH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    path: bytes
    reason: str
    error: bool
    def __init__(self, path: _Optional[bytes] = ..., reason: _Optional[str] = ..., error: _Optional[bool] = ...) -> None: ...

class PlanItem(_message.Message):
    __slots__ = ("path", "change", "kind", "why", "size", "target")
    PATH_FIELD_NUMBER: _ClassVar[int]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    WHY_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    path: bytes
    change: str
    kind: str
    why: _containers.RepeatedScalarFieldContainer[str]
    size: int
    target: bytes
    def __init__(self, path: _Optional[bytes] = ..., change: _Optional[str] = ..., kind: _Optional[str] = ..., why: _Optional[_Iterable[str]] = ..., size: _Optional[int] = ..., target: _Optional[bytes] = ...) -> None: ...

class Attempt(_message.Message):
    __slots__ = ("number", "started_at", "ended_at", "error", "stats", "source")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    number: int
    started_at: float
    ended_at: float
    error: str
    stats: TransferStats
    source: bytes
    def __init__(self, number: _Optional[int] = ..., started_at: _Optional[float] = ..., ended_at: _Optional[float] = ..., error: _Optional[str] = ..., stats: _Optional[_Union[TransferStats, _Mapping]] = ..., source: _Optional[bytes] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "state", "source", "destination", "options", "created_at", "updated_at", "started_at", "finished_at", "attempts", "max_attempts", "error", "wait_reason", "progress", "history", "next_attempt_at", "group_id", "skipped", "plan", "schedule_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    WAIT_REASON_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    NEXT_ATTEMPT_AT_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    state: JobState
    source: Endpoint
    destination: Endpoint
    options: JobOptions
    created_at: float
    updated_at: float
    started_at: float
    finished_at: float
    attempts: int
    max_attempts: int
    error: str
    wait_reason: str
    progress: TransferStats
    history: _containers.RepeatedCompositeFieldContainer[Attempt]
    next_attempt_at: float
    group_id: int
    skipped: _containers.RepeatedCompositeFieldContainer[SkippedEntry]
    plan: _containers.RepeatedCompositeFieldContainer[PlanItem]
    schedule_id: int
    def __init__(self, id: _Optional[int] = ..., state: _Optional[_Union[JobState, str]] = ..., source: _Optional[_Union[Endpoint, _Mapping]] = ..., destination: _Optional[_Union[Endpoint, _Mapping]] = ..., options: _Optional[_Union[JobOptions, _Mapping]] = ..., created_at: _Optional[float] = ..., updated_at: _Optional[float] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., attempts: _Optional[int] = ..., max_attempts: _Optional[int] = ..., error: _Optional[str] = ..., wait_reason: _Optional[str] = ..., progress: _Optional[_Union[TransferStats, _Mapping]] = ..., history: _Optional[_Iterable[_Union[Attempt, _Mapping]]] = ..., next_attempt_at: _Optional[float] = ..., group_id: _Optional[int] = ..., skipped: _Optional[_Iterable[_Union[SkippedEntry, _Mapping]]] = ..., plan: _Optional[_Iterable[_Union[PlanItem, _Mapping]]] = ..., schedule_id: _Optional[int] = ...) -> None: ...
