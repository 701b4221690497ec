"""Conversion between the schedule wire messages (schedule.proto) and ``zcrepl.core.schedtypes``."""

from __future__ import annotations

from zcrepl.core.schedtypes import Schedule, ScheduleState
from zcrepl.proto import schedule_pb2 as schpb
from zcrepl.proto.convert import endpoint_from_pb, endpoint_to_pb, options_from_pb, options_to_pb

_STATE_TO_PB = {ScheduleState.ACTIVE: schpb.SCHEDULE_STATE_ACTIVE, ScheduleState.PAUSED: schpb.SCHEDULE_STATE_PAUSED}
_STATE_FROM_PB = {v: k for k, v in _STATE_TO_PB.items()}


def schedule_to_pb(s: Schedule) -> schpb.Schedule:
    return schpb.Schedule(
        id=s.id, source=endpoint_to_pb(s.source), destination=endpoint_to_pb(s.destination),
        options=options_to_pb(s.options), cron=s.cron, every=s.every, tz=s.tz, state=_STATE_TO_PB[s.state],
        created_at=s.created_at, next_due=s.next_due, runs=s.runs, last_job_id=s.last_job_id,
        last_run_at=s.last_run_at, skips=s.skips, last_skip_at=s.last_skip_at, last_skip=s.last_skip,
        last_error=s.last_error, last_error_at=s.last_error_at, last_state=s.last_state,
        last_job_error=s.last_job_error,
    )


def schedule_from_pb(m: schpb.Schedule) -> Schedule:
    return Schedule(
        id=m.id, source=endpoint_from_pb(m.source), destination=endpoint_from_pb(m.destination),
        options=options_from_pb(m.options), cron=m.cron, every=m.every, tz=m.tz,
        state=_STATE_FROM_PB.get(m.state, ScheduleState.ACTIVE), created_at=m.created_at, next_due=m.next_due,
        runs=m.runs, last_job_id=m.last_job_id, last_run_at=m.last_run_at, skips=m.skips,
        last_skip_at=m.last_skip_at, last_skip=m.last_skip, last_error=m.last_error, last_error_at=m.last_error_at,
        last_state=m.last_state, last_job_error=m.last_job_error,
    )
