from zcrepl.proto import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ScheduleState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCHEDULE_STATE_UNSPECIFIED: _ClassVar[ScheduleState]
    SCHEDULE_STATE_ACTIVE: _ClassVar[ScheduleState]
    SCHEDULE_STATE_PAUSED: _ClassVar[ScheduleState]
SCHEDULE_STATE_UNSPECIFIED: ScheduleState
SCHEDULE_STATE_ACTIVE: ScheduleState
SCHEDULE_STATE_PAUSED: ScheduleState

class Schedule(_message.Message):
    __slots__ = ("id", "source", "destination", "options", "cron", "every", "tz", "state", "created_at", "next_due", "runs", "last_job_id", "last_run_at", "skips", "last_skip_at", "last_skip", "last_error", "last_error_at", "last_state", "last_job_error")
    ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    CRON_FIELD_NUMBER: _ClassVar[int]
    EVERY_FIELD_NUMBER: _ClassVar[int]
    TZ_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    NEXT_DUE_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    LAST_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_RUN_AT_FIELD_NUMBER: _ClassVar[int]
    SKIPS_FIELD_NUMBER: _ClassVar[int]
    LAST_SKIP_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_SKIP_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_STATE_FIELD_NUMBER: _ClassVar[int]
    LAST_JOB_ERROR_FIELD_NUMBER: _ClassVar[int]
    id: int
    source: _types_pb2.Endpoint
    destination: _types_pb2.Endpoint
    options: _types_pb2.JobOptions
    cron: str
    every: float
    tz: str
    state: ScheduleState
    created_at: float
    next_due: float
    runs: int
    last_job_id: int
    last_run_at: float
    skips: int
    last_skip_at: float
    last_skip: str
    last_error: str
    last_error_at: float
    last_state: str
    last_job_error: str
    def __init__(self, id: _Optional[int] = ..., source: _Optional[_Union[_types_pb2.Endpoint, _Mapping]] = ..., destination: _Optional[_Union[_types_pb2.Endpoint, _Mapping]] = ..., options: _Optional[_Union[_types_pb2.JobOptions, _Mapping]] = ..., cron: _Optional[str] = ..., every: _Optional[float] = ..., tz: _Optional[str] = ..., state: _Optional[_Union[ScheduleState, str]] = ..., created_at: _Optional[float] = ..., next_due: _Optional[float] = ..., runs: _Optional[int] = ..., last_job_id: _Optional[int] = ..., last_run_at: _Optional[float] = ..., skips: _Optional[int] = ..., last_skip_at: _Optional[float] = ..., last_skip: _Optional[str] = ..., last_error: _Optional[str] = ..., last_error_at: _Optional[float] = ..., last_state: _Optional[str] = ..., last_job_error: _Optional[str] = ...) -> None: ...

class CreateScheduleRequest(_message.Message):
    __slots__ = ("source", "destination", "options", "cron", "every", "tz", "request_id")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    CRON_FIELD_NUMBER: _ClassVar[int]
    EVERY_FIELD_NUMBER: _ClassVar[int]
    TZ_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    source: _types_pb2.Endpoint
    destination: _types_pb2.Endpoint
    options: _types_pb2.JobOptions
    cron: str
    every: float
    tz: str
    request_id: str
    def __init__(self, source: _Optional[_Union[_types_pb2.Endpoint, _Mapping]] = ..., destination: _Optional[_Union[_types_pb2.Endpoint, _Mapping]] = ..., options: _Optional[_Union[_types_pb2.JobOptions, _Mapping]] = ..., cron: _Optional[str] = ..., every: _Optional[float] = ..., tz: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class ScheduleRef(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    def __init__(self, id: _Optional[int] = ...) -> None: ...

class ListSchedulesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSchedulesResponse(_message.Message):
    __slots__ = ("schedules",)
    SCHEDULES_FIELD_NUMBER: _ClassVar[int]
    schedules: _containers.RepeatedCompositeFieldContainer[Schedule]
    def __init__(self, schedules: _Optional[_Iterable[_Union[Schedule, _Mapping]]] = ...) -> None: ...
