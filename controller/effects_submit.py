"""A submitted job's checks and what its creation changes, as values and effects (issue 15, item 6; the effect types
are in effects.py): the job (or each job of a fan-out) is admitted against the known agents, named when it is a
snapshot, created by the store (the one step the engine's shell takes in between: it gives the job its id), then
kept as queued, logged and scheduled. No I/O, no clock, no store: tested with tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from zcrepl.controller import snapshot, validate
from zcrepl.controller.effects import Effect, Group, Log, Track, Wake
from zcrepl.controller.registry import AgentRecord
from zcrepl.controller.runs import job_fields
from zcrepl.controller.scheduler import overlaps
from zcrepl.core.errors import InvalidPath, UnknownHost
from zcrepl.core.types import Endpoint, Job, JobOptions


@dataclass(frozen=True)
class NewJob:
    """A job for the store to create, as admitted."""

    source: Endpoint
    destination: Endpoint
    options: JobOptions
    max_attempts: int


def unknown_host(name: str) -> str:
    return (f"unknown host {name!r}: no zc-agent named {name!r} has registered with this controller; "
            "run 'zc-ctl agents' to list hosts, or start zc-agent --name " + name + " on that server")


def admitted(src: Endpoint, dst: Endpoint, options: JobOptions, agents: Mapping[str, AgentRecord]) -> JobOptions:
    """The checks of a job from ``src`` to ``dst`` (also a schedule's, before it is stored) against the known
    ``agents``: the options as the job would carry them, or UnknownHost / InvalidPath in one sentence."""
    for ep in (src, dst):
        if ep.host not in agents:
            raise UnknownHost(unknown_host(ep.host))
    if overlaps(src, dst):
        raise InvalidPath(f"{src} and {dst} overlap; "
                          "the destination must not be inside the source or the other way round")
    if options.bwlimit < 0 or options.max_attempts < 0:
        raise InvalidPath("bwlimit and max_attempts must not be negative")
    if options.backup_dir or options.link_dest:
        options = validate.job_dirs(src, dst, options, agents[dst.host].info.exports)
    return options


def submission(src: Endpoint, dst: Endpoint, options: JobOptions, agents: Mapping[str, AgentRecord],
               live: Iterable[Job], snapshot_now: float, default_attempts: int) -> NewJob:
    """The job to create: admitted, a snapshot named after ``snapshot_now`` (unique among the ``live`` jobs: a
    schedule's runs each get their own), its attempts the job's own budget or ``default_attempts``."""
    options = admitted(src, dst, options, agents)
    if options.snapshot:
        options = snapshot.name_job(dst, options, agents[dst.host].info.exports, snapshot_now, live)
    return NewJob(src, dst, options, options.max_attempts or default_attempts)


def queued(job: Job) -> list[Effect]:
    """The store created ``job``: kept as queued, logged, and a scheduling pass soon."""
    return [Track(job), Log("job queued", {**job_fields(job), "src": str(job.source), "dst": str(job.destination),
                                           "priority": job.options.priority.name.lower()}), Wake()]


def fanout_checked(dsts: Sequence[Endpoint]) -> None:
    """A fan-out's destinations: at least two, none twice, none overlapping another (InvalidPath says which)."""
    if len(dsts) < 2:
        raise InvalidPath("a fan-out needs at least two destinations; use SubmitJob for one")
    if len({(d.host, d.path) for d in dsts}) != len(dsts):
        raise InvalidPath("the same destination appears twice")
    for i, a in enumerate(dsts):
        for b in dsts[i + 1:]:
            if overlaps(a, b):
                raise InvalidPath(f"destinations {a} and {b} overlap")


def grouped(jobs: Sequence[Job]) -> list[Effect]:
    """A fan-out's ``jobs``, created: one group named after the first."""
    return [Group(tuple(j.id for j in jobs), jobs[0].id)]
