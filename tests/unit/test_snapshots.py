"""zc-ctl snapshot's pure parts and the destination's work on real directories: names, restic-style retention
across days, ISO weeks and months, the controller naming a job when it is created (and what it refuses), and
the agent's in-progress directory, its lock, its cleanup, the link base and the rename into place.
test_backup_recipe.py runs it all on a cluster."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from enginehelpers import Harness, ep

from zcrepl.agent.transfer.jobdirs import ExtraDirs
from zcrepl.agent.transfer.local import LocalCopy
from zcrepl.agent.transfer.saferoot import SafeRoot
from zcrepl.agent.transfer.snapshot import Snapshot, SnapshotBusy, begin_snapshot, job_rel
from zcrepl.controller import validate
from zcrepl.controller.store import open_store
from zcrepl.controller.store_sql import options_from_json, options_json
from zcrepl.core.errors import Conflict, InvalidArgument, InvalidPath
from zcrepl.core.snapshots import in_progress, leftover, name_at, newest, parse_name, retain
from zcrepl.core.types import JobOptions, JobState


def at(text: str) -> str:
    """The snapshot name of "2026-11-30 02:00" (UTC)."""
    return name_at(datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC).timestamp())


def test_names_sort_as_times_and_only_names_parse() -> None:
    assert at("2026-11-30 02:00") == "2026-11-30T020000Z"
    assert parse_name(b"2026-11-30T020000Z") == datetime(2026, 11, 30, 2, tzinfo=UTC)
    for other in (b"2026-13-45T020000Z", b".2026-11-30T020000Z.in-progress", b"2026-11-30T020000Z.old",
                  b"latest", b"2026-11-30"):
        assert parse_name(other) is None, other
    assert leftover(in_progress("2026-11-30T020000Z")) and leftover(b".2026-11-30T020000Z.pruning")
    assert not leftover(b".hidden.in-progress") and not leftover(b"2026-11-30T020000Z")
    assert newest(["2026-11-29T020000Z", "2026-11-30T020000Z", "latest"], upto="2026-11-29T230000Z") == \
        "2026-11-29T020000Z"
    assert newest(["2026-11-30T020000Z"], upto="2026-11-30T020000Z") == "2026-11-30T020000Z"  # a retry's own
    assert newest(["2026-12-01T020000Z"], upto="2026-11-30T020000Z") == "2026-12-01T020000Z"  # clock went back
    assert newest([]) is None


def _nightly(first: str, days: int, per_day: tuple[str, ...] = ("02:00",)) -> list[str]:
    start = datetime.strptime(first, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()
    return [name_at(start + d * 86400 + int(h[:2]) * 3600 + int(h[3:]) * 60) for d in range(days) for h in per_day]


@pytest.mark.parametrize("names,keep,expected", [
    # No rule keeps everything.
    (_nightly("2026-11-01", 5), {}, _nightly("2026-11-01", 5)),
    # Daily: the newest of each of the last N days that have snapshots.
    (_nightly("2026-11-01", 5, ("02:00", "14:00")), {"daily": 2},
     [at("2026-11-05 14:00"), at("2026-11-04 14:00")]),
    # Days without snapshots don't count (restic's "last N days which have one").
    ([at("2026-11-01 02:00"), at("2026-11-10 02:00")], {"daily": 2},
     [at("2026-11-01 02:00"), at("2026-11-10 02:00")]),
    # ISO weeks: 2026-12-28 (Mon) to 2027-01-03 (Sun) is 2026-W53, so the new year's first days share its week.
    ([at("2026-12-27 02:00"), at("2026-12-28 02:00"), at("2027-01-03 02:00"), at("2027-01-04 02:00")],
     {"weekly": 2}, [at("2027-01-04 02:00"), at("2027-01-03 02:00")]),
    # Months, and the rules together: a snapshot kept by any rule stays.
    (_nightly("2026-09-28", 40), {"daily": 3, "monthly": 3},
     [at("2026-11-06 02:00"), at("2026-11-05 02:00"), at("2026-11-04 02:00"), at("2026-10-31 02:00"),
      at("2026-09-30 02:00")]),
    # The newest is always kept, even by a rule that would keep a month's newest only.
    ([at("2026-11-01 02:00"), at("2026-11-02 02:00")], {"monthly": 1}, [at("2026-11-02 02:00")]),
    # Other entries of the directory are not snapshots: ignored, never listed to keep or prune.
    (["latest", at("2026-11-01 02:00")], {"daily": 1}, [at("2026-11-01 02:00")]),
])
def test_retention(names: list[str], keep: dict[str, int], expected: list[str]) -> None:
    assert retain(names, keep.get("daily", 0), keep.get("weekly", 0), keep.get("monthly", 0)) == set(expected)


# -- the controller ---------------------------------------------------------------------------------
@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    harness.agent("hostA")
    harness.agent("hostB")
    yield harness
    harness.close()


def test_controller_names_a_snapshot_when_it_creates_the_job(h: Harness) -> None:
    h.engine.snapshot_clock = lambda: datetime(2026, 11, 30, 2, tzinfo=UTC).timestamp()
    opts = validate.options(JobOptions(snapshot=True, keep_daily=7, snapshot_name="chosen-by-a-client"))
    assert opts.snapshot_name == ""
    job = h.engine.submit(ep("hostA:/srv/data"), ep("hostB:/srv/snaps"), opts)
    assert job.options.snapshot_name == "2026-11-30T020000Z" and job.destination == ep("hostB:/srv/snaps")
    assert h.engine.get(job.id).options.snapshot_name == "2026-11-30T020000Z"  # stored so, retries use it
    with pytest.raises(Conflict, match="already queued as job"):  # a second one in the same second
        h.engine.submit(ep("hostA:/srv/data"), ep("hostB:/srv/snaps"), opts)
    h.engine.cancel(job.id)
    assert h.engine.get(job.id).state is JobState.CANCELLED
    h.engine.submit(ep("hostA:/srv/data"), ep("hostB:/srv/snaps"), opts)  # the name is free again
    with pytest.raises(InvalidPath, match="outside hostB's exports"):
        h.engine.submit(ep("hostA:/srv/data"), ep("hostB:/elsewhere/snaps"), opts)


@pytest.mark.parametrize("options,says", [
    (JobOptions(keep_daily=3), "belong to snapshots"),
    (JobOptions(snapshot=True, keep_weekly=10**6), "--keep-weekly 1000000 is refused"),
    (JobOptions(snapshot=True, dry_run=True), "--dry-run is refused for a snapshot"),
    (JobOptions(snapshot=True, backup_dir=b"../b"), "--backup-dir is refused for a snapshot"),
    (JobOptions(snapshot=True, link_dest=(b"/srv/x",) * 20), "name at most 19"),
])
def test_snapshot_options_refused(options: JobOptions, says: str) -> None:
    with pytest.raises(InvalidArgument, match=says):
        validate.options(options)


def test_snapshot_refused_for_fanout_and_watch() -> None:
    for what in ("a fan-out", "a watch rule"):
        with pytest.raises(InvalidArgument, match=f"a snapshot is refused for {what}"):
            validate.several(JobOptions(snapshot=True), what)


def test_snapshot_options_kept_by_the_store(store_spec: str, tmp_path: Path) -> None:
    """On both backends, in the options document (no schema step: a job written by the previous version, without
    these keys, reads as no snapshot)."""
    store = open_store(store_spec, str(tmp_path))
    try:
        o = JobOptions(snapshot=True, snapshot_name="2026-11-30T020000Z", keep_daily=7, keep_weekly=5,
                       keep_monthly=12)
        job = store.create_job(ep("hostA:/srv/d"), ep("hostB:/srv/snaps"), o, 3, 1000.0)
        stored = store.get_job(job.id)
        assert stored is not None and stored.options == o
    finally:
        store.close()
    before = json.loads(options_json(JobOptions(delete=True)))
    for key in ("snapshot", "snapshot_name", "keep_daily", "keep_weekly", "keep_monthly"):
        del before[key]
    assert options_from_json(json.dumps(before)) == JobOptions(delete=True)


# -- the destination --------------------------------------------------------------------------------
T = 1_600_000_000


def _run(base: Path, name: str, **keep: int) -> int:
    """One snapshot of base/src into base/snaps as the destination agent makes it (LocalCopy: the network
    receiver's TreeWriter); the snapshots it pruned."""
    options = JobOptions(snapshot=True, snapshot_name=name, **keep)
    with SafeRoot(os.fsencode(base / "src")) as src, SafeRoot(os.fsencode(base)) as export:
        rel = job_rel((b"snaps",), options)
        snap = begin_snapshot(export, rel, options, "hostB:/snaps")
        try:
            stats = LocalCopy(1, src, export, rel, options, "hostB:/snaps", threading.Event(), lambda _s: None,
                              dirs=snap.dirs(ExtraDirs())).run()
            assert stats.errors == 0
            return snap.complete()
        finally:
            snap.close()


def _write(path: Path, data: bytes, t: int = T) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (t, t))


def test_snapshot_links_against_the_newest_complete_one_and_cleans_up(tmp_path: Path) -> None:
    _write(tmp_path / "src" / "same.txt", b"same")
    _write(tmp_path / "src" / "d" / "changes.txt", b"one")
    assert _run(tmp_path, "2026-11-28T020000Z") == 0
    snaps = tmp_path / "snaps"
    first = snaps / "2026-11-28T020000Z"
    assert (first / "d" / "changes.txt").read_bytes() == b"one"
    # An interrupted run left its in-progress directory (a later name: never a link base, whatever its name).
    stale = snaps / ".2026-11-29T020000Z.in-progress"
    _write(stale / "same.txt", b"same")
    _write(stale / "d" / "changes.txt", b"half")
    _write(tmp_path / "src" / "d" / "changes.txt", b"two", T + 60)
    assert _run(tmp_path, "2026-11-30T020000Z") == 0
    second = snaps / "2026-11-30T020000Z"
    assert (second / "d" / "changes.txt").read_bytes() == b"two"
    assert (second / "same.txt").stat().st_ino == (first / "same.txt").stat().st_ino  # linked from the first
    assert (second / "d" / "changes.txt").stat().st_ino != (first / "d" / "changes.txt").stat().st_ino
    assert sorted(p.name for p in snaps.iterdir()) == ["2026-11-28T020000Z", "2026-11-30T020000Z"]
    # Retention prunes once the new one is complete.
    assert _run(tmp_path, "2026-12-01T020000Z", keep_daily=1) == 2
    assert sorted(p.name for p in snaps.iterdir()) == ["2026-12-01T020000Z"]


def test_a_held_snapshot_is_left_alone_and_a_retry_takes_its_name_over(tmp_path: Path) -> None:
    """An in-progress directory whose run still holds its lock is never removed (it is removed once let go), and
    a run that finds its own held fails its attempt (retryable)."""
    _write(tmp_path / "src" / "f", b"f")
    options = JobOptions(snapshot=True, snapshot_name="2026-11-29T020000Z")
    with SafeRoot(os.fsencode(tmp_path)) as export:
        held = Snapshot(export, job_rel((b"snaps",), options), options, "hostB:/snaps")
        try:
            assert _run(tmp_path, "2026-11-30T020000Z") == 0
            assert (tmp_path / "snaps" / ".2026-11-29T020000Z.in-progress").is_dir()
            with pytest.raises(SnapshotBusy, match="held by another run"):
                Snapshot(export, job_rel((b"snaps",), options), options, "hostB:/snaps")
        finally:
            held.close()
    # An earlier attempt completed this snapshot but its report was lost: the retry links against it and
    # takes its name over.
    (tmp_path / "src" / "f").write_bytes(b"g")
    first = tmp_path / "snaps" / "2026-11-30T020000Z"
    assert _run(tmp_path, "2026-11-30T020000Z") == 0
    assert (first / "f").read_bytes() == b"g"
    assert sorted(p.name for p in (tmp_path / "snaps").iterdir()) == ["2026-11-30T020000Z"]


HOLD = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY); "
        "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()")


def test_a_killed_writer_lets_go(tmp_path: Path) -> None:
    """The lock is the writer process's: while it lives its in-progress directory stays, once it is killed
    (SIGKILL, as an agent dies) the next run removes what it left."""
    _write(tmp_path / "src" / "f", b"f")
    left = tmp_path / "snaps" / ".2026-11-29T020000Z.in-progress"
    _write(left / "half-written", b"x")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(left)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        _run(tmp_path, "2026-11-30T020000Z")
        assert (left / "half-written").exists()
    finally:
        holder.kill()
        holder.communicate()
    _run(tmp_path, "2026-12-01T020000Z")
    assert sorted(p.name for p in (tmp_path / "snaps").iterdir()) == ["2026-11-30T020000Z", "2026-12-01T020000Z"]


def test_snapshots_directory_through_a_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    os.symlink("real", tmp_path / "snaps")
    options = JobOptions(snapshot=True, snapshot_name="2026-11-30T020000Z")
    with SafeRoot(os.fsencode(tmp_path)) as export, pytest.raises(InvalidPath, match="passes through a symlink"):
        Snapshot(export, job_rel((b"snaps",), options), options, "hostB:/snaps")
    assert list((tmp_path / "real").iterdir()) == []


def test_readme_coming_from_rsync_covers_the_issue_options() -> None:
    """Issue 12 item 8: the table has a row for each rsync option the issue names (mapped, or why not)."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    start = readme.index("Coming from rsync")
    rows = [line for line in readme[start:readme.index("### Dry run", start)].splitlines() if line.startswith("| `")]
    firsts = [row.split("|")[1] for row in rows]
    for option in ("-n", "-z", "--delete", "-c", "--bwlimit", "--exclude", "--include", "--exclude-from",
                   "--link-dest", "--backup-dir"):
        assert any(re.search(rf"[` ]{re.escape(option)}[`=/ ]", first) for first in firsts), option
    assert "zc-ctl snapshot" in readme[readme.index("### Backup recipe"):]
