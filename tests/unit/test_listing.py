"""The receiver's per-directory manifest state (agent/transfer/listing.py): what it refuses, what it keeps."""

from __future__ import annotations

import pytest

from zcrepl.agent.transfer import entrycodec as ec
from zcrepl.agent.transfer import frame as fr
from zcrepl.agent.transfer.frame import F_LINKED, F_UNREADABLE, Entry, Kind
from zcrepl.agent.transfer.listing import Listing
from zcrepl.core.errors import ProtocolError, UnsafePath


def d(path: bytes, flags: int = 0) -> Entry:
    return Entry(Kind.DIR, path, 0o755, 0, flags=flags)


def f(path: bytes, flags: int = 0) -> Entry:
    return Entry(Kind.FILE, path, 0o644, 0, 1, flags=flags)


def link(path: bytes, target: bytes) -> Entry:
    return Entry(Kind.HARDLINK, path, 0o644, 0, target=target)


def test_names_are_held_for_one_directory_at_a_time_and_spilled_for_delete() -> None:
    ls = Listing(keep_names=True)
    entries = [d(b"a"), d(b"b"), d(b"empty")]
    entries += [f(b"a/%d" % i) for i in range(50)] + [f(b"b/%d" % i) for i in range(50)]
    held = []
    for e in entries:
        assert ls.admit(e) == tuple(e.path.split(b"/"))
        held.append(ls.held())
    assert max(held) <= 3 + 4 + 50  # open directories + the root's names + one directory's names
    assert ls.closed == 2  # the root, then a
    listed = dict(ls.directories())
    assert listed == {b"": {b"a", b"b", b"empty"}, b"a": {b"%d" % i for i in range(50)},
                      b"b": {b"%d" % i for i in range(50)}, b"empty": set()}
    assert dict(ls.directories()) == listed  # read back as often as asked
    ls.close()


@pytest.mark.parametrize("entries, needle", [
    ([d(b"a"), d(b"b"), f(b"a/x"), f(b"b/y"), f(b"a/z")], "not sent together"),  # a closed, then revisited
    ([d(b"a"), f(b"a/x"), f(b"a/x")], "duplicate name"),
    ([f(b"x"), f(b"x")], "duplicate name"),
    ([f(b"x"), link(b"y", b"x")], "hard link to something that is not a file"),  # x not flagged F_LINKED
    ([d(b"a", F_UNREADABLE), f(b"a/x")], "parent is not a directory announced"),
    ([f(b"x"), f(b"x/y")], "parent is not a directory announced"),
    ([f(b"../x")], "'.' or '..'"),
])
@pytest.mark.parametrize("by_run", [False, True], ids=["entry", "run"])
def test_bad_manifests_are_refused(entries: list[Entry], needle: str, by_run: bool) -> None:
    ls = Listing(keep_names=False)
    with pytest.raises((ProtocolError, UnsafePath), match=needle):
        admit_all(ls, entries, by_run)
    ls.close()


def admit_all(ls: Listing, entries: list[Entry], by_run: bool) -> None:
    """Entry by entry, or as the receiver does: the runs of one ENTRIES frame per entry group of the wire."""
    if not by_run:
        for e in entries:
            ls.admit(e)
        return
    for run in ec.decode_runs(ec.encode_entries(entries)[fr.HEAD.size :]):
        assert ls.admit_run(run.prefix, run.entries, run.leaves) == tuple(run.prefix.split(b"/")[:-1])


@pytest.mark.parametrize("leaf, needle", [
    (b"", "empty"), (b".", "'.' or '..'"), (b"..", "'.' or '..'"), (b"x\0", "NUL"), (b".zc.tmp", "temp namespace"),
    (b"n" * 256, "longer than 255"),
])
def test_a_run_checks_every_name(leaf: bytes, needle: str) -> None:
    """The run's names are checked with a few scans of one string: each kind of bad name is still caught,
    wherever it stands in the run."""
    for at in (0, 2):
        ls = Listing(keep_names=False)
        names = [b"ok1", b"ok2", b"ok3"]
        names[at] = leaf
        with pytest.raises(UnsafePath, match=needle):
            admit_all(ls, [d(b"a")] + [f(b"a/" + n) for n in names], by_run=True)
        ls.close()


def test_a_run_keeps_what_entries_keep() -> None:
    ls = Listing(keep_names=True)
    entries = [d(b"a"), f(b"x", F_LINKED), d(b"b", F_UNREADABLE), f(b"a/1"), link(b"a/2", b"x")]
    admit_all(ls, entries, by_run=True)
    assert ls.linkable == {b"x"} and b"b" not in ls.open
    assert dict(ls.directories()) == {b"": {b"a", b"x", b"b"}, b"a": {b"1", b"2"}}
    ls.close()


def test_hard_links_name_flagged_files_only_and_a_watch_manifest_may_revisit() -> None:
    ls = Listing(keep_names=False)
    for e in (f(b"x", F_LINKED), f(b"y"), link(b"z", b"x")):
        ls.admit(e)
    assert ls.linkable == {b"x"}
    ls = Listing(keep_names=False, contiguous=False)  # a watch session's sorted paths
    for e in (d(b"a"), f(b"a/x"), f(b"b"), f(b"a/y")):
        ls.admit(e)
    assert ls.closed == 0
