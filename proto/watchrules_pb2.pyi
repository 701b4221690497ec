from zcrepl.proto import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WatchState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WATCH_STATE_UNSPECIFIED: _ClassVar[WatchState]
    WATCH_STATE_ACTIVE: _ClassVar[WatchState]
    WATCH_STATE_PAUSED: _ClassVar[WatchState]

class WatchPhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WATCH_PHASE_UNSPECIFIED: _ClassVar[WatchPhase]
    WATCH_PHASE_STARTING: _ClassVar[WatchPhase]
    WATCH_PHASE_RECONCILING: _ClassVar[WatchPhase]
    WATCH_PHASE_WATCHING: _ClassVar[WatchPhase]
    WATCH_PHASE_HELD: _ClassVar[WatchPhase]
    WATCH_PHASE_WAITING: _ClassVar[WatchPhase]
    WATCH_PHASE_FAILED: _ClassVar[WatchPhase]
    WATCH_PHASE_PAUSED: _ClassVar[WatchPhase]
    WATCH_PHASE_REMOVED: _ClassVar[WatchPhase]
WATCH_STATE_UNSPECIFIED: WatchState
WATCH_STATE_ACTIVE: WatchState
WATCH_STATE_PAUSED: WatchState
WATCH_PHASE_UNSPECIFIED: WatchPhase
WATCH_PHASE_STARTING: WatchPhase
WATCH_PHASE_RECONCILING: WatchPhase
WATCH_PHASE_WATCHING: WatchPhase
WATCH_PHASE_HELD: WatchPhase
WATCH_PHASE_WAITING: WatchPhase
WATCH_PHASE_FAILED: WatchPhase
WATCH_PHASE_PAUSED: WatchPhase
WATCH_PHASE_REMOVED: WatchPhase

class WatchCounters(_message.Message):
    __slots__ = ("sessions", "changes", "files", "bytes", "deleted", "renamed", "reconciles", "errors", "skipped")
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    RENAMED_FIELD_NUMBER: _ClassVar[int]
    RECONCILES_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    sessions: int
    changes: int
    files: int
    bytes: int
    deleted: int
    renamed: int
    reconciles: int
    errors: int
    skipped: int
    def __init__(self, sessions: _Optional[int] = ..., changes: _Optional[int] = ..., files: _Optional[int] = ..., bytes: _Optional[int] = ..., deleted: _Optional[int] = ..., renamed: _Optional[int] = ..., reconciles: _Optional[int] = ..., errors: _Optional[int] = ..., skipped: _Optional[int] = ...) -> None: ...

class WatchStatus(_message.Message):
    __slots__ = ("rule_id", "epoch", "watching", "lag", "pending", "held", "reconciling", "counters", "last_error", "last_error_at", "last_shipped_at", "warning")
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    WATCHING_FIELD_NUMBER: _ClassVar[int]
    LAG_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    RECONCILING_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_SHIPPED_AT_FIELD_NUMBER: _ClassVar[int]
    WARNING_FIELD_NUMBER: _ClassVar[int]
    rule_id: int
    epoch: int
    watching: bool
    lag: float
    pending: int
    held: bool
    reconciling: bool
    counters: WatchCounters
    last_error: str
    last_error_at: float
    last_shipped_at: float
    warning: str
    def __init__(self, rule_id: _Optional[int] = ..., epoch: _Optional[int] = ..., watching: _Optional[bool] = ..., lag: _Optional[float] = ..., pending: _Optional[int] = ..., held: _Optional[bool] = ..., reconciling: _Optional[bool] = ..., counters: _Optional[_Union[WatchCounters, _Mapping]] = ..., last_error: _Optional[str] = ..., last_error_at: _Optional[float] = ..., last_shipped_at: _Optional[float] = ..., warning: _Optional[str] = ...) -> None: ...

class WatchRule(_message.Message):
    __slots__ = ("id", "source", "destinations", "options", "state", "created_at", "window", "quiet", "counters", "status", "lag", "pending", "last_error", "last_error_at", "last_shipped_at", "phase")
    ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DESTINATIONS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    QUIET_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LAG_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_SHIPPED_AT_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    id: int
    source: _types_pb2.Endpoint
    destinations: _containers.RepeatedCompositeFieldContainer[_types_pb2.Endpoint]
    options: _types_pb2.JobOptions
    state: WatchState
    created_at: float
    window: float
    quiet: float
    counters: WatchCounters
    status: str
    lag: float
    pending: int
    last_error: str
    last_error_at: float
    last_shipped_at: float
    phase: WatchPhase
    def __init__(self, id: _Optional[int] = ..., source: _Optional[_Union[_types_pb2.Endpoint, _Mapping]] = ..., destinations: _Optional[_Iterable[_Union[_types_pb2.Endpoint, _Mapping]]] = ..., options: _Optional[_Union[_types_pb2.JobOptions, _Mapping]] = ..., state: _Optional[_Union[WatchState, str]] = ..., created_at: _Optional[float] = ..., window: _Optional[float] = ..., quiet: _Optional[float] = ..., counters: _Optional[_Union[WatchCounters, _Mapping]] = ..., status: _Optional[str] = ..., lag: _Optional[float] = ..., pending: _Optional[int] = ..., last_error: _Optional[str] = ..., last_error_at: _Optional[float] = ..., last_shipped_at: _Optional[float] = ..., phase: _Optional[_Union[WatchPhase, str]] = ...) -> None: ...

class WatchDest(_message.Message):
    __slots__ = ("host", "data_address", "ticket", "path", "encrypt")
    HOST_FIELD_NUMBER: _ClassVar[int]
    DATA_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TICKET_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    ENCRYPT_FIELD_NUMBER: _ClassVar[int]
    host: str
    data_address: str
    ticket: bytes
    path: bytes
    encrypt: bool
    def __init__(self, host: _Optional[str] = ..., data_address: _Optional[str] = ..., ticket: _Optional[bytes] = ..., path: _Optional[bytes] = ..., encrypt: _Optional[bool] = ...) -> None: ...

class WatchSourceOrder(_message.Message):
    __slots__ = ("rule_id", "epoch", "path", "options", "window", "quiet", "dests", "held", "hold_reason")
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    QUIET_FIELD_NUMBER: _ClassVar[int]
    DESTS_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    HOLD_REASON_FIELD_NUMBER: _ClassVar[int]
    rule_id: int
    epoch: int
    path: bytes
    options: _types_pb2.JobOptions
    window: float
    quiet: float
    dests: _containers.RepeatedCompositeFieldContainer[WatchDest]
    held: bool
    hold_reason: str
    def __init__(self, rule_id: _Optional[int] = ..., epoch: _Optional[int] = ..., path: _Optional[bytes] = ..., options: _Optional[_Union[_types_pb2.JobOptions, _Mapping]] = ..., window: _Optional[float] = ..., quiet: _Optional[float] = ..., dests: _Optional[_Iterable[_Union[WatchDest, _Mapping]]] = ..., held: _Optional[bool] = ..., hold_reason: _Optional[str] = ...) -> None: ...

class WatchDestOrder(_message.Message):
    __slots__ = ("rule_id", "epoch", "path", "options", "ticket", "source_host", "source_addresses", "ticket_ttl")
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    TICKET_FIELD_NUMBER: _ClassVar[int]
    SOURCE_HOST_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    TICKET_TTL_FIELD_NUMBER: _ClassVar[int]
    rule_id: int
    epoch: int
    path: bytes
    options: _types_pb2.JobOptions
    ticket: bytes
    source_host: str
    source_addresses: _containers.RepeatedScalarFieldContainer[str]
    ticket_ttl: float
    def __init__(self, rule_id: _Optional[int] = ..., epoch: _Optional[int] = ..., path: _Optional[bytes] = ..., options: _Optional[_Union[_types_pb2.JobOptions, _Mapping]] = ..., ticket: _Optional[bytes] = ..., source_host: _Optional[str] = ..., source_addresses: _Optional[_Iterable[str]] = ..., ticket_ttl: _Optional[float] = ...) -> None: ...

class WatchTicketOrder(_message.Message):
    __slots__ = ("rule_id", "epoch", "host", "ticket")
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    TICKET_FIELD_NUMBER: _ClassVar[int]
    rule_id: int
    epoch: int
    host: str
    ticket: bytes
    def __init__(self, rule_id: _Optional[int] = ..., epoch: _Optional[int] = ..., host: _Optional[str] = ..., ticket: _Optional[bytes] = ...) -> None: ...

class WatchStopOrder(_message.Message):
    __slots__ = ("rule_id", "reason")
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    rule_id: int
    reason: str
    def __init__(self, rule_id: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class WatchHoldOrder(_message.Message):
    __slots__ = ("rule_id", "epoch", "held", "reason")
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    rule_id: int
    epoch: int
    held: bool
    reason: str
    def __init__(self, rule_id: _Optional[int] = ..., epoch: _Optional[int] = ..., held: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class CreateWatchRuleRequest(_message.Message):
    __slots__ = ("source", "destinations", "options", "window", "quiet", "request_id")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DESTINATIONS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    QUIET_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    source: _types_pb2.Endpoint
    destinations: _containers.RepeatedCompositeFieldContainer[_types_pb2.Endpoint]
    options: _types_pb2.JobOptions
    window: float
    quiet: float
    request_id: str
    def __init__(self, source: _Optional[_Union[_types_pb2.Endpoint, _Mapping]] = ..., destinations: _Optional[_Iterable[_Union[_types_pb2.Endpoint, _Mapping]]] = ..., options: _Optional[_Union[_types_pb2.JobOptions, _Mapping]] = ..., window: _Optional[float] = ..., quiet: _Optional[float] = ..., request_id: _Optional[str] = ...) -> None: ...

class WatchRef(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    def __init__(self, id: _Optional[int] = ...) -> None: ...

class ListWatchRulesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListWatchRulesResponse(_message.Message):
    __slots__ = ("rules",)
    RULES_FIELD_NUMBER: _ClassVar[int]
    rules: _containers.RepeatedCompositeFieldContainer[WatchRule]
    def __init__(self, rules: _Optional[_Iterable[_Union[WatchRule, _Mapping]]] = ...) -> None: ...
