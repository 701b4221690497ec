"""zc-ctl snapshots on the agent (agent/snapshot_list.py): a real export on disk, real flocks. Complete snapshots
and in-progress directories by name; being written told by the lock a run holds, looked up without taking it;
anything else in the directory ignored; paths it may not or cannot list refused in one sentence."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from zcrepl.agent.exports import Exports
from zcrepl.agent.snapshot_list import list_snapshots
from zcrepl.core.errors import InvalidPath
from zcrepl.core.snapshots import SnapshotEntry


@pytest.fixture
def export(tmp_path: Path) -> Iterator[tuple[Exports, Path]]:
    root = tmp_path / "export"
    snaps = root / "snaps"
    for d in ("2026-11-29T020000Z", "2026-11-28T020000Z", ".2026-11-30T020000Z.in-progress",
              ".2026-11-27T020000Z.in-progress", ".2026-11-26T020000Z.pruning", "other", ".hidden"):
        (snaps / d).mkdir(parents=True)
    (snaps / "2026-11-25T020000Z").write_bytes(b"a file under a snapshot's name is no snapshot")
    os.symlink("2026-11-29T020000Z", snaps / "2026-11-24T020000Z")  # nor a symlink
    (root / "plain").mkdir()
    (root / "plain" / "data.txt").write_bytes(b"x")
    ex = Exports("hostB", (os.fsencode(root),))
    try:
        yield ex, root
    finally:
        ex.close()


def test_complete_snapshots_and_in_progress_ones_told_apart_by_their_lock(export: tuple[Exports, Path]) -> None:
    ex, root = export
    fd = os.open(root / "snaps" / ".2026-11-30T020000Z.in-progress", os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a run writing it holds it
        listed = list_snapshots(ex, "hostB", os.fsencode(root / "snaps"))
    finally:
        os.close(fd)
    assert listed == [
        SnapshotEntry("2026-11-27T020000Z", in_progress=True, writing=False),  # an interrupted run's
        SnapshotEntry("2026-11-28T020000Z"),
        SnapshotEntry("2026-11-29T020000Z"),
        SnapshotEntry("2026-11-30T020000Z", in_progress=True, writing=True),
    ]
    # Its run gone (the lock with it), the same directory is an interrupted run's leftover.
    assert not list_snapshots(ex, "hostB", os.fsencode(root / "snaps"))[-1].writing


@pytest.mark.parametrize("path,says", [
    ("/etc", "hostB:/etc is outside the exports of hostB"),
    ("{root}/plain", "hostB:{root}/plain is not a snapshots directory"),
    ("{root}/missing", "hostB:{root}/missing does not exist"),
    ("{root}/plain/data.txt", "hostB:{root}/plain/data.txt is not a directory"),
])
def test_what_cannot_be_listed_is_refused_in_one_sentence(export: tuple[Exports, Path], path: str,
                                                           says: str) -> None:
    ex, root = export
    with pytest.raises(InvalidPath) as err:
        list_snapshots(ex, "hostB", os.fsencode(path.format(root=root)))
    assert says.format(root=root) in str(err.value) and "\n" not in str(err.value)


def test_a_lock_table_it_cannot_read_means_nothing_is_being_written(export: tuple[Exports, Path],
                                                                   tmp_path: Path) -> None:
    ex, root = export
    listed = list_snapshots(ex, "hostB", os.fsencode(root / "snaps"), locks=str(tmp_path / "no-such-file"))
    assert [e.writing for e in listed] == [False] * 4
