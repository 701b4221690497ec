"""zc-ctl snapshot on the controller: a snapshot job is named when it is created (the schedule's runs too, which
come through the same path), from the engine's snapshot clock; the destination agent does the rest
(zcrepl.agent.transfer.snapshot)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from zcrepl.core.errors import Conflict, InvalidPath
from zcrepl.core.paths import relative_to, show
from zcrepl.core.snapshots import name_at
from zcrepl.core.types import Endpoint, Job, JobOptions


def name_job(dst: Endpoint, o: JobOptions, exports: tuple[bytes, ...], now: float, live: Iterable[Job]) -> JobOptions:
    """``o`` with its snapshot named after ``now`` (UTC), after checking the snapshots directory lies in one of the
    destination's ``exports`` (empty when not known yet: then only the agent checks) and that no queued or
    running snapshot of it already has that name (two in the same second)."""
    if exports and not any(relative_to(dst.path, e) is not None for e in exports):
        raise InvalidPath(f"snapshots directory {dst} is outside {dst.host}'s exports "
                          f"({', '.join(show(e) for e in exports)}); choose a directory inside one of them")
    name = name_at(now)
    for j in live:
        if j.options.snapshot and j.options.snapshot_name == name and j.destination == dst:
            raise Conflict(f"snapshot {name} of {dst} is already queued as job {j.id}; snapshots are named by "
                           "the second they are made: try again in a second")
    return replace(o, snapshot_name=name)
