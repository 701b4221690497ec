from zcrepl.proto import schedule_pb2 as _schedule_pb2
from zcrepl.proto import watchrules_pb2 as _watchrules_pb2
from zcrepl.proto import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_SENDER: _ClassVar[Role]
    ROLE_RECEIVER: _ClassVar[Role]

class Phase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PHASE_UNSPECIFIED: _ClassVar[Phase]
    PHASE_READY: _ClassVar[Phase]
    PHASE_PROGRESS: _ClassVar[Phase]
    PHASE_DONE: _ClassVar[Phase]
    PHASE_FAILED: _ClassVar[Phase]
ROLE_UNSPECIFIED: Role
ROLE_SENDER: Role
ROLE_RECEIVER: Role
PHASE_UNSPECIFIED: Phase
PHASE_READY: Phase
PHASE_PROGRESS: Phase
PHASE_DONE: Phase
PHASE_FAILED: Phase

class TransferRef(_message.Message):
    __slots__ = ("job_id", "attempt")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    job_id: int
    attempt: int
    def __init__(self, job_id: _Optional[int] = ..., attempt: _Optional[int] = ...) -> None: ...

class Register(_message.Message):
    __slots__ = ("info", "active")
    INFO_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    info: _types_pb2.AgentInfo
    active: _containers.RepeatedCompositeFieldContainer[TransferRef]
    def __init__(self, info: _Optional[_Union[_types_pb2.AgentInfo, _Mapping]] = ..., active: _Optional[_Iterable[_Union[TransferRef, _Mapping]]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("health", "watch_rules")
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    WATCH_RULES_FIELD_NUMBER: _ClassVar[int]
    health: _types_pb2.HostHealth
    watch_rules: _containers.RepeatedCompositeFieldContainer[_watchrules_pb2.WatchStatus]
    def __init__(self, health: _Optional[_Union[_types_pb2.HostHealth, _Mapping]] = ..., watch_rules: _Optional[_Iterable[_Union[_watchrules_pb2.WatchStatus, _Mapping]]] = ...) -> None: ...

class TransferReport(_message.Message):
    __slots__ = ("job_id", "attempt", "role", "phase", "stats", "error", "retryable", "skipped", "plan")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    job_id: int
    attempt: int
    role: Role
    phase: Phase
    stats: _types_pb2.TransferStats
    error: str
    retryable: bool
    skipped: _containers.RepeatedCompositeFieldContainer[_types_pb2.SkippedEntry]
    plan: _containers.RepeatedCompositeFieldContainer[_types_pb2.PlanItem]
    def __init__(self, job_id: _Optional[int] = ..., attempt: _Optional[int] = ..., role: _Optional[_Union[Role, str]] = ..., phase: _Optional[_Union[Phase, str]] = ..., stats: _Optional[_Union[_types_pb2.TransferStats, _Mapping]] = ..., error: _Optional[str] = ..., retryable: _Optional[bool] = ..., skipped: _Optional[_Iterable[_Union[_types_pb2.SkippedEntry, _Mapping]]] = ..., plan: _Optional[_Iterable[_Union[_types_pb2.PlanItem, _Mapping]]] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("register", "heartbeat", "report")
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    register: Register
    heartbeat: Heartbeat
    report: TransferReport
    def __init__(self, register: _Optional[_Union[Register, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., report: _Optional[_Union[TransferReport, _Mapping]] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("heartbeat_interval", "controller_version", "attempt_grace")
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    CONTROLLER_VERSION_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_GRACE_FIELD_NUMBER: _ClassVar[int]
    heartbeat_interval: float
    controller_version: str
    attempt_grace: float
    def __init__(self, heartbeat_interval: _Optional[float] = ..., controller_version: _Optional[str] = ..., attempt_grace: _Optional[float] = ...) -> None: ...

class ReceiveOrder(_message.Message):
    __slots__ = ("job_id", "attempt", "ticket", "path", "options", "source_host", "source_addresses")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    TICKET_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_HOST_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    job_id: int
    attempt: int
    ticket: bytes
    path: bytes
    options: _types_pb2.JobOptions
    source_host: str
    source_addresses: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, job_id: _Optional[int] = ..., attempt: _Optional[int] = ..., ticket: _Optional[bytes] = ..., path: _Optional[bytes] = ..., options: _Optional[_Union[_types_pb2.JobOptions, _Mapping]] = ..., source_host: _Optional[str] = ..., source_addresses: _Optional[_Iterable[str]] = ...) -> None: ...

class SendOrder(_message.Message):
    __slots__ = ("job_id", "attempt", "ticket", "path", "options", "dest_host", "dest_data_address", "dest_path")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    TICKET_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    DEST_HOST_FIELD_NUMBER: _ClassVar[int]
    DEST_DATA_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    DEST_PATH_FIELD_NUMBER: _ClassVar[int]
    job_id: int
    attempt: int
    ticket: bytes
    path: bytes
    options: _types_pb2.JobOptions
    dest_host: str
    dest_data_address: str
    dest_path: bytes
    def __init__(self, job_id: _Optional[int] = ..., attempt: _Optional[int] = ..., ticket: _Optional[bytes] = ..., path: _Optional[bytes] = ..., options: _Optional[_Union[_types_pb2.JobOptions, _Mapping]] = ..., dest_host: _Optional[str] = ..., dest_data_address: _Optional[str] = ..., dest_path: _Optional[bytes] = ...) -> None: ...

class CancelOrder(_message.Message):
    __slots__ = ("job_id", "attempt", "reason", "discard_partial")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DISCARD_PARTIAL_FIELD_NUMBER: _ClassVar[int]
    job_id: int
    attempt: int
    reason: str
    discard_partial: bool
    def __init__(self, job_id: _Optional[int] = ..., attempt: _Optional[int] = ..., reason: _Optional[str] = ..., discard_partial: _Optional[bool] = ...) -> None: ...

class ThrottleOrder(_message.Message):
    __slots__ = ("job_id", "attempt", "bwlimit", "paused", "reason")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    BWLIMIT_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    job_id: int
    attempt: int
    bwlimit: int
    paused: bool
    reason: str
    def __init__(self, job_id: _Optional[int] = ..., attempt: _Optional[int] = ..., bwlimit: _Optional[int] = ..., paused: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class ControllerMessage(_message.Message):
    __slots__ = ("welcome", "receive", "send", "cancel", "throttle", "watch_source", "watch_dest", "watch_stop", "watch_hold", "watch_ticket", "leader_epoch", "store_id")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    RECEIVE_FIELD_NUMBER: _ClassVar[int]
    SEND_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    THROTTLE_FIELD_NUMBER: _ClassVar[int]
    WATCH_SOURCE_FIELD_NUMBER: _ClassVar[int]
    WATCH_DEST_FIELD_NUMBER: _ClassVar[int]
    WATCH_STOP_FIELD_NUMBER: _ClassVar[int]
    WATCH_HOLD_FIELD_NUMBER: _ClassVar[int]
    WATCH_TICKET_FIELD_NUMBER: _ClassVar[int]
    LEADER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    STORE_ID_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    receive: ReceiveOrder
    send: SendOrder
    cancel: CancelOrder
    throttle: ThrottleOrder
    watch_source: _watchrules_pb2.WatchSourceOrder
    watch_dest: _watchrules_pb2.WatchDestOrder
    watch_stop: _watchrules_pb2.WatchStopOrder
    watch_hold: _watchrules_pb2.WatchHoldOrder
    watch_ticket: _watchrules_pb2.WatchTicketOrder
    leader_epoch: int
    store_id: str
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., receive: _Optional[_Union[ReceiveOrder, _Mapping]] = ..., send: _Optional[_Union[SendOrder, _Mapping]] = ..., cancel: _Optional[_Union[CancelOrder, _Mapping]] = ..., throttle: _Optional[_Union[ThrottleOrder, _Mapping]] = ..., watch_source: _Optional[_Union[_watchrules_pb2.WatchSourceOrder, _Mapping]] = ..., watch_dest: _Optional[_Union[_watchrules_pb2.WatchDestOrder, _Mapping]] = ..., watch_stop: _Optional[_Union[_watchrules_pb2.WatchStopOrder, _Mapping]] = ..., watch_hold: _Optional[_Union[_watchrules_pb2.WatchHoldOrder, _Mapping]] = ..., watch_ticket: _Optional[_Union[_watchrules_pb2.WatchTicketOrder, _Mapping]] = ..., leader_epoch: _Optional[int] = ..., store_id: _Optional[str] = ...) -> None: ...

class SubmitJobRequest(_message.Message):
    __slots__ = ("source", "destination", "options", "request_id")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    source: _types_pb2.Endpoint
    destination: _types_pb2.Endpoint
    options: _types_pb2.JobOptions
    request_id: str
    def __init__(self, source: _Optional[_Union[_types_pb2.Endpoint, _Mapping]] = ..., destination: _Optional[_Union[_types_pb2.Endpoint, _Mapping]] = ..., options: _Optional[_Union[_types_pb2.JobOptions, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class SubmitFanoutRequest(_message.Message):
    __slots__ = ("source", "destinations", "options", "request_id")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DESTINATIONS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    source: _types_pb2.Endpoint
    destinations: _containers.RepeatedCompositeFieldContainer[_types_pb2.Endpoint]
    options: _types_pb2.JobOptions
    request_id: str
    def __init__(self, source: _Optional[_Union[_types_pb2.Endpoint, _Mapping]] = ..., destinations: _Optional[_Iterable[_Union[_types_pb2.Endpoint, _Mapping]]] = ..., options: _Optional[_Union[_types_pb2.JobOptions, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class JobRef(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    def __init__(self, id: _Optional[int] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("states", "limit", "group_id")
    STATES_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedScalarFieldContainer[_types_pb2.JobState]
    limit: int
    group_id: int
    def __init__(self, states: _Optional[_Iterable[_Union[_types_pb2.JobState, str]]] = ..., limit: _Optional[int] = ..., group_id: _Optional[int] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[_types_pb2.Job]
    def __init__(self, jobs: _Optional[_Iterable[_Union[_types_pb2.Job, _Mapping]]] = ...) -> None: ...

class AgentStatus(_message.Message):
    __slots__ = ("info", "online", "last_seen", "connected_at", "health", "running_jobs", "history")
    INFO_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_AT_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    RUNNING_JOBS_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    info: _types_pb2.AgentInfo
    online: bool
    last_seen: float
    connected_at: float
    health: _types_pb2.HostHealth
    running_jobs: int
    history: _containers.RepeatedCompositeFieldContainer[_types_pb2.HostHealth]
    def __init__(self, info: _Optional[_Union[_types_pb2.AgentInfo, _Mapping]] = ..., online: _Optional[bool] = ..., last_seen: _Optional[float] = ..., connected_at: _Optional[float] = ..., health: _Optional[_Union[_types_pb2.HostHealth, _Mapping]] = ..., running_jobs: _Optional[int] = ..., history: _Optional[_Iterable[_Union[_types_pb2.HostHealth, _Mapping]]] = ...) -> None: ...

class ListAgentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListAgentsResponse(_message.Message):
    __slots__ = ("agents",)
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[AgentStatus]
    def __init__(self, agents: _Optional[_Iterable[_Union[AgentStatus, _Mapping]]] = ...) -> None: ...

class AgentRef(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class AgentHealthRequest(_message.Message):
    __slots__ = ("names", "history")
    NAMES_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    history: int
    def __init__(self, names: _Optional[_Iterable[str]] = ..., history: _Optional[int] = ...) -> None: ...

class AgentHealthResponse(_message.Message):
    __slots__ = ("agents",)
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[AgentStatus]
    def __init__(self, agents: _Optional[_Iterable[_Union[AgentStatus, _Mapping]]] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("at", "kind", "reason")
    AT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    at: float
    kind: str
    reason: str
    def __init__(self, at: _Optional[float] = ..., kind: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("job_id", "decisions")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    job_id: int
    decisions: _containers.RepeatedCompositeFieldContainer[Decision]
    def __init__(self, job_id: _Optional[int] = ..., decisions: _Optional[_Iterable[_Union[Decision, _Mapping]]] = ...) -> None: ...
