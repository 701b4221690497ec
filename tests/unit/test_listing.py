"""The receiver's per-directory manifest state (agent/transfer/listing.py): what it refuses, what it keeps."""

from __future__ import annotations

import pytest

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
def test_bad_manifests_are_refused(entries: list[Entry], needle: str) -> None:
    ls = Listing(keep_names=False)
    with pytest.raises((ProtocolError, UnsafePath), match=needle):
        for e in entries:
            ls.admit(e)
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
