"""A submitted job's checks and creation (controller/effects_submit.py) as tables; without asyncio, a store or
agents."""

from __future__ import annotations

from dataclasses import replace

import pytest

from zcrepl.controller.effects import Group, Log, Track, Wake
from zcrepl.controller.effects_submit import NewJob, admitted, fanout_checked, grouped, queued, submission
from zcrepl.controller.registry import AgentRecord
from zcrepl.core.errors import Conflict, InvalidPath, UnknownHost
from zcrepl.core.types import AgentInfo, Endpoint, Job, JobOptions, JobState

SRC, DST = Endpoint("hostA", b"/a"), Endpoint("hostB", b"/srv/b")
AGENTS = {"hostA": AgentRecord(AgentInfo("hostA"), 0.0),
          "hostB": AgentRecord(AgentInfo("hostB", exports=(b"/srv",)), 0.0)}
NOON = 1_764_504_000.0  # 2025-11-30 12:00:00 UTC


@pytest.mark.parametrize(
    ("src", "dst", "options", "error", "words"),
    [
        (SRC, Endpoint("hostC", b"/c"), JobOptions(), UnknownHost, "unknown host 'hostC'"),
        (SRC, Endpoint("hostA", b"/a/in"), JobOptions(), InvalidPath, "overlap"),
        (SRC, DST, JobOptions(bwlimit=-1), InvalidPath, "must not be negative"),
        (SRC, DST, JobOptions(backup_dir=b"/elsewhere"), InvalidPath, "outside"),
    ],
    ids=["unknown-host", "overlap", "negative", "backup-outside-exports"],
)
def test_admitted_refuses(src: Endpoint, dst: Endpoint, options: JobOptions, error: type[Exception],
                          words: str) -> None:
    with pytest.raises(error, match=words):
        admitted(src, dst, options, AGENTS)


def test_submission() -> None:
    assert submission(SRC, DST, JobOptions(), AGENTS, [], 0.0, 5) == NewJob(SRC, DST, JobOptions(), 5)
    own = JobOptions(max_attempts=2, backup_dir=b"../old")  # resolved against the destination, inside its export
    new = submission(SRC, DST, own, AGENTS, [], 0.0, 5)
    assert new.max_attempts == 2 and new.options.backup_dir == b"/srv/old"
    snap = submission(SRC, DST, JobOptions(snapshot=True), AGENTS, [], NOON, 5)
    assert snap.options.snapshot_name == "2025-11-30T120000Z"
    live = [Job(7, JobState.QUEUED, SRC, DST, options=snap.options)]
    with pytest.raises(Conflict, match="already queued as job 7"):  # two in the same second
        submission(SRC, DST, JobOptions(snapshot=True), AGENTS, live, NOON, 5)


def test_queued() -> None:
    job = Job(3, JobState.QUEUED, SRC, DST)
    fx = queued(job)
    assert fx[0] == Track(job) and fx[2] == Wake()
    assert isinstance(fx[1], Log) and fx[1].fields["dst"] == str(DST) and fx[1].fields["priority"] == "normal"


@pytest.mark.parametrize(
    ("dsts", "words"),
    [
        ([DST], "at least two"),
        ([DST, DST], "appears twice"),
        ([DST, Endpoint("hostB", b"/srv/b/c")], "overlap"),
    ],
    ids=["one", "twice", "overlapping"],
)
def test_fanout_checked(dsts: list[Endpoint], words: str) -> None:
    with pytest.raises(InvalidPath, match=words):
        fanout_checked(dsts)


def test_grouped() -> None:
    jobs = [Job(4, JobState.QUEUED, SRC, DST), Job(5, JobState.QUEUED, SRC, replace(DST, host="hostA"))]
    fanout_checked([j.destination for j in jobs])
    assert grouped(jobs) == [Group((4, 5), 4)]
