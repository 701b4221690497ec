"""README's "Backup recipe" end to end on a real cluster: nightly `zc-ctl snapshot` runs with retention over
simulated days, weeks and months (the controller's snapshot clock reads a file the test moves; everything else
runs on real time), with changes between runs, a run cancelled halfway, a restore of one file and the space used.

Checked: each kept snapshot equals the source as it was at its run; a file unchanged since the previous
snapshot is the same inode; the cancelled run's in-progress directory is never a link base and the next run
removes it; retention keeps exactly the snapshots restic's forget would."""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from zchelpers import Cluster, running, snapshot, wait_for

from zcrepl.core.types import Endpoint, JobOptions

LAUNCHER = """\
import runpy, sys
from pathlib import Path
from zcrepl.controller import engine

clock_file = Path(sys.argv.pop(1))
init = engine.Engine.__init__

def with_clock(self, *args, **kwargs):
    init(self, *args, **kwargs)
    self.snapshot_clock = lambda: float(clock_file.read_text())

engine.Engine.__init__ = with_clock
runpy.run_module("zcrepl.controller", run_name="__main__")
"""

KEEP = ("--keep-daily", "2", "--keep-weekly", "2", "--keep-monthly", "2")
T = 1_700_000_000


class Recipe:
    def __init__(self, cl: Cluster, base: Path) -> None:
        self.cl = cl
        self.src = base / "a" / "data"
        self.snaps = base / "b" / "snaps"
        self.clock = base / "clock"

    def at(self, when: str) -> str:
        """Move the controller's snapshot clock to ``when`` (UTC); the snapshot name it gives."""
        t = datetime.strptime(when, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)
        self.clock.write_text(str(t.timestamp()))
        return t.strftime("%Y-%m-%dT%H%M%SZ")

    def run(self, when: str, *flags: str) -> tuple[str, dict[bytes, Any]]:
        """One night's `zc-ctl snapshot` (the recipe's command); the name and the source as it was."""
        name = self.at(when)
        before = snapshot(self.src)
        rc, out, err = self.cl.ctl("snapshot", *KEEP, *flags, f"hostA:{self.src}", f"hostB:{self.snaps}")
        assert rc == 0, err
        assert f"snapshot hostB:{self.snaps}/{name} complete" in out, out
        return name, before

    def names(self) -> list[str]:
        return sorted(p.name for p in self.snaps.iterdir())

    def ino(self, name: str, rel: str) -> int:
        return (self.snaps / name / rel).stat().st_ino


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recipe]:
    base = tmp_path_factory.mktemp("recipe")
    (base / "launch.py").write_text(LAUNCHER)
    (base / "clock").write_text("0")
    c = Cluster(base)
    argv = c.controller.argv
    i = argv.index("-m")
    assert argv[i + 1] == "zcrepl.controller"
    argv[i:i + 2] = [str(base / "launch.py"), str(base / "clock")]
    with running(c):
        yield Recipe(c, base)


def _write(path: Path, data: bytes, t: int = T) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (t, t))


def _settle_dirs(root: Path) -> None:
    """Directory mtimes as a tool that wrote them long ago left them (the comparison includes them)."""
    for d in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        os.utime(d, (T, T))


def test_nightly_snapshots_with_retention(recipe: Recipe) -> None:
    src = recipe.src
    _write(src / "docs" / "report.txt", b"draft 1")
    _write(src / "docs" / "notes.txt", b"notes")
    _write(src / "photos" / "cat.jpg", os.urandom(64 << 10))
    os.symlink("docs/report.txt", src / "latest-report")
    _settle_dirs(src)

    # Saturday and Sunday (ISO week 48, November).
    sat, sat_tree = recipe.run("2026-11-28 02:00")
    assert snapshot(recipe.snaps / sat) == sat_tree
    _write(src / "docs" / "report.txt", b"draft 2, longer", T + 86400)
    (src / "docs" / "notes.txt").unlink()
    _write(src / "docs" / "new.txt", b"new on sunday", T + 86400)
    _settle_dirs(src)
    sun, sun_tree = recipe.run("2026-11-29 02:00")
    assert snapshot(recipe.snaps / sun) == sun_tree
    assert recipe.ino(sun, "photos/cat.jpg") == recipe.ino(sat, "photos/cat.jpg")  # unchanged: linked
    assert recipe.ino(sun, "docs/report.txt") != recipe.ino(sat, "docs/report.txt")
    assert (recipe.snaps / sat / "docs" / "report.txt").read_bytes() == b"draft 1"  # the older one unchanged
    assert (recipe.snaps / sat / "docs" / "notes.txt").exists()

    # Monday's run is cancelled halfway: it leaves its in-progress directory and no snapshot.
    _write(src / "big.bin", os.urandom(4 << 20), T + 2 * 86400)
    _settle_dirs(src)
    mon = recipe.at("2026-11-30 02:00")
    with recipe.cl.client() as c:  # in-process: the recipe's command is above, this is its interruption
        job = c.submit(Endpoint("hostA", os.fsencode(src)), Endpoint("hostB", os.fsencode(recipe.snaps)),
                       JobOptions(snapshot=True, keep_daily=2, keep_weekly=2, keep_monthly=2,
                                  bwlimit=256 << 10)).id
        partial = recipe.snaps / f".{mon}.in-progress"
        wait_for(lambda: c.job(job).progress.bytes_done > 0, 30, what="the cancelled run to start")
        c.cancel(job)
    ended = re.compile(rf"attempt ended here.*\bjob[=\": ]+{job}\b")
    wait_for(lambda: any(ended.search(line) for line in recipe.cl.daemons["hostB"].log().splitlines()), 30,
             what="the receiver to let go of the cancelled snapshot")
    assert partial.is_dir() and mon not in recipe.names()

    # Tuesday (ISO week 49, December): Monday's leftovers go; the base is Sunday's, never the interrupted one.
    tue, tue_tree = recipe.run("2026-12-01 02:00")
    assert snapshot(recipe.snaps / tue) == tue_tree
    assert not partial.exists()
    assert recipe.ino(tue, "docs/new.txt") == recipe.ino(sun, "docs/new.txt")
    # Saturday went: the newest of each of the last 2 days (Tue, Sun), weeks (W49, W48), months (Dec, Nov).
    assert recipe.names() == [sun, tue]

    # Wednesday, twice: the first run of the day is superseded by the second.
    _write(src / "docs" / "report.txt", b"final", T + 4 * 86400)
    _settle_dirs(src)
    wed1, _ = recipe.run("2026-12-02 02:00")
    assert recipe.names() == [sun, tue, wed1]
    final = recipe.ino(wed1, "docs/report.txt")
    wed2, wed2_tree = recipe.run("2026-12-02 14:00")
    assert snapshot(recipe.snaps / wed2) == wed2_tree
    assert recipe.ino(wed2, "docs/report.txt") == final
    # daily 2: Wed 14:00, Tue; weekly 2: W49's newest (Wed 14:00), W48's (Sun); monthly 2: Dec's, Nov's (Sun).
    assert recipe.names() == [sun, tue, wed2]
    assert snapshot(recipe.snaps / sun) == sun_tree and snapshot(recipe.snaps / tue) == tue_tree

    # Restore one file from Sunday's snapshot to hostA (the recipe's command).
    restore = src.parent / "restore"
    rc, _out, err = recipe.cl.ctl("replicate", "--include", "/docs/", "--include", "/docs/report.txt",
                                  "--exclude", "*", f"hostB:{recipe.snaps}/{sun}", f"hostA:{restore}")
    assert rc == 0, err
    assert [str(p.relative_to(restore)) for p in sorted(restore.rglob("*"))] == ["docs", "docs/report.txt"]
    assert (restore / "docs" / "report.txt").read_bytes() == b"draft 2, longer"

    # Space used: du counts a hard-linked file once, at its first snapshot in the list, so each snapshot after
    # the first shows what it added; alone, a snapshot shows its whole size.
    def du(*names: str) -> list[int]:
        out = subprocess.run(["du", "-s", "--block-size=1", *(str(recipe.snaps / n) for n in names)],
                             capture_output=True, text=True, check=True).stdout.split()
        return [int(x) for x in out[::2]]

    assert du(*recipe.names())[-1] < 64 << 10 < 4 << 20 < du(wed2)[0]


@pytest.mark.parametrize("args,says", [
    (("hostB:/etc/snaps",), "snapshots directory hostB:/etc/snaps is outside hostB's exports"),
    (("--backup-dir", "../bak", "hostB:{b}/snaps-b"), "--backup-dir is refused for a snapshot"),
])
def test_snapshot_bad_input_refused_in_one_sentence(recipe: Recipe, args: tuple[str, ...], says: str) -> None:
    b = recipe.snaps.parent
    before = sorted(p.name for p in b.iterdir())
    rc, out, err = recipe.cl.ctl("snapshot", f"hostA:{recipe.src}", *(a.format(b=b) for a in args))
    assert rc == 2 and says in err and err.count("\n") == 1 and not out, err
    assert sorted(p.name for p in b.iterdir()) == before  # nothing made


def test_snapshots_lists_the_directory_with_the_job_that_made_each(recipe: Recipe) -> None:
    """zc-ctl snapshots, read from hostB's agent: what the directory holds (an in-progress directory a run holds,
    one an interrupted run left), each complete snapshot with its job from the controller's records."""
    if not recipe.snaps.exists():  # run alone: one night first
        _write(recipe.src / "f", b"x")
        recipe.run("2026-12-03 02:00")
    complete = recipe.names()
    writing, left = recipe.snaps / ".2026-12-09T020000Z.in-progress", recipe.snaps / ".2026-12-08T020000Z.in-progress"
    writing.mkdir()
    left.mkdir()
    fd = os.open(writing, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as the run writing it holds it
        rc, out, err = recipe.cl.ctl("snapshots", "--json", f"hostB:{recipe.snaps}/")
        assert rc == 0, err
        listed = json.loads(out)
        rc, table, err = recipe.cl.ctl("snapshots", f"hostB:{recipe.snaps}")
        assert rc == 0, err
    finally:
        os.close(fd)
        writing.rmdir()
        left.rmdir()
    assert [(d["name"], d["complete"], d["writing"]) for d in listed] == [
        *((n, True, False) for n in complete), ("2026-12-08T020000Z", False, False),
        ("2026-12-09T020000Z", False, True)]
    with recipe.cl.client() as c:
        for d in listed[:len(complete)]:
            assert d["job_state"] == "done" and c.job(d["job_id"]).options.snapshot_name == d["name"]
            assert d["time"] == datetime.strptime(d["name"], "%Y-%m-%dT%H%M%SZ").strftime("%Y-%m-%dT%H:%M:%SZ")
    assert listed[-1]["job_id"] is None  # made by hand here: no job names it
    assert f"snapshots in hostB:{recipe.snaps}: {len(complete)} complete, 1 being written" in table
    assert "being written" in table and "left by an interrupted run" in table


@pytest.mark.parametrize("arg,says", [
    ("hostZ:/srv", "unknown host 'hostZ'"),
    ("hostB:/etc", "hostB:/etc is outside the exports of hostB"),
    ("hostB:{b}", "is not a snapshots directory"),
])
def test_snapshots_bad_input_refused_in_one_sentence(recipe: Recipe, arg: str, says: str) -> None:
    rc, out, err = recipe.cl.ctl("snapshots", arg.format(b=recipe.snaps.parent))
    assert rc == 2 and says in err and err.count("\n") == 1 and not out, err
