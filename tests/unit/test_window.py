"""Tests for zcrepl.agent.transfer.window: what the sender keeps of a streamed manifest, and when the scan waits."""

from __future__ import annotations

import pytest

from zcrepl.agent.transfer.frame import Entry, Kind
from zcrepl.agent.transfer.window import FileWindow
from zcrepl.core.errors import Cancelled, ProtocolError


def batch(first: int, n: int) -> list[Entry]:
    """n entries from index ``first``: a directory first, then files."""
    return [Entry(Kind.DIR if i == first else Kind.FILE, b"e%d" % i, 0o644, 0, i) for i in range(first, first + n)]


def test_batches_are_kept_until_decided_and_asked_files_until_sent() -> None:
    w = FileWindow(window=8)
    w.announce_batch(0, batch(0, 4))
    w.announce_batch(4, batch(4, 4))
    assert (len(w), w.peak) == (8, 8)
    assert w.ask(2).path == b"e2" and w[2].path == b"e2"
    w.expect(2, 2)  # split across two connections
    assert w.ask(5).path == b"e5"
    assert len(w) == 8  # a file asked for in an undecided batch is kept once
    w.decided(4, 8)
    assert len(w) == 4 + 1  # the second batch, and file 2 until it is sent
    assert not w.item_done(2) and w.item_done(2)
    assert len(w) == 4
    assert w.item_done(5)  # sent before its batch was decided: the batch still holds it
    w.decided(8, 8)
    assert len(w) == 0
    with pytest.raises(KeyError):
        w[5]


@pytest.mark.parametrize(("index", "why"), [(0, "a directory"), (1, "asked already"), (3, "decided"),
                                           (9, "never announced")])
def test_a_need_for_anything_but_an_undecided_file_not_asked_yet_is_a_protocol_error(index: int, why: str) -> None:
    w = FileWindow()
    w.announce_batch(0, batch(0, 4))
    w.announce_batch(4, batch(4, 4))
    w.ask(1)
    if why == "decided":
        w.decided(4, 8)
    with pytest.raises(ProtocolError, match="NEED for index"):
        w.ask(index)


def test_the_scan_waits_only_while_the_window_is_full() -> None:
    w = FileWindow(window=4)
    w.wait_room(lambda: pytest.fail("the window has room"))
    w.announce_batch(0, batch(0, 4))

    def cancelled() -> None:
        raise Cancelled("cancelled")

    with pytest.raises(Cancelled):
        w.wait_room(cancelled)  # full: it looks at its check before it waits
    w.decided(4, 4)
    w.wait_room(lambda: pytest.fail("the window has room again"))
