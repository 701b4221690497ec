"""The sender's side of a streamed manifest: which announced entries it keeps, and how far it may run ahead.

The scan sends ENTRIES in batches of ``BATCH``; the receiver answers each batch with its NEEDs (and bases)
and then MANIFEST_ACK(n): the first n entries are decided. A batch is kept whole, as the list it was sent
from, until every entry of it is decided; a file asked for is kept besides until it is sent (every work item
of it done). The scan stops before the next batch while ``WINDOW`` entries or more are kept (those of
undecided batches plus the decided files asked for and not yet sent), so the sender holds at most ``WINDOW + BATCH``
entries, and the receiver at most as many needed files, whatever the tree's size: a no-change re-sync keeps
a few batches in flight, a first copy as many files as the data connections have queued. Nothing here is
done per entry of a batch, only per file asked for: a no-change re-sync of a million files announces and
lets go of two thousand lists.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from zcrepl.agent.transfer.frame import Entry, Kind
from zcrepl.core.errors import ProtocolError

__all__ = ["BATCH", "WINDOW", "FileWindow"]

BATCH = 512  # manifest entries per ENTRIES frame
WINDOW = 8192  # entries the sender keeps (announced, not yet decided or sent) before the scan waits
_POLL = 1.0  # a safety net only: cancel and failure wake the waiting scan (``wake``)


class FileWindow:
    """Entries announced and still of use; thread-safe (scan, control reader and data workers)."""

    def __init__(self, window: int = 0) -> None:
        self.window = window or WINDOW
        self._batches: deque[tuple[int, list[Entry]]] = deque()  # (first index, entries) not wholly decided
        self._in_batches = 0  # entries in _batches
        self._asked: dict[int, Entry] = {}  # files asked for, until their last work item is done
        self._asked_decided = 0  # files in _asked below decided_upto (the others are in _batches too)
        self._left: dict[int, int] = {}  # asked files -> work items still to do
        self._cv = threading.Condition()
        self.decided_upto = 0
        self.peak = 0  # most entries kept at once (for the tests and the bench)

    def announce_batch(self, first: int, batch: list[Entry]) -> None:
        """The batch whose first entry is ``first`` is kept until decided (the list itself: do not change it)."""
        with self._cv:
            self._batches.append((first, batch))
            self._in_batches += len(batch)
            self.peak = max(self.peak, self._in_batches + self._asked_decided)

    def __getitem__(self, index: int) -> Entry:
        """A file asked for and not yet sent."""
        return self._asked[index]

    def ask(self, index: int) -> Entry:
        """The receiver asked for file ``index`` (one work item unless ``expect`` says more)."""
        with self._cv:
            e = None
            if index >= self.decided_upto and index not in self._left:
                for first, batch in self._batches:  # the oldest undecided batch, nearly always
                    if index < first + len(batch):
                        e = batch[index - first] if index >= first else None
                        break
            if e is None or e.kind is not Kind.FILE:
                raise ProtocolError(f"NEED for index {index}, which is not a file we announced, was asked already, "
                                    "or was decided in an earlier batch")
            self._left[index] = 1
            self._asked[index] = e
            return e

    def expect(self, index: int, items: int) -> None:
        with self._cv:
            self._left[index] = items

    def decided(self, upto: int, announced: int) -> None:
        """MANIFEST_ACK: entries below ``upto`` are decided; batches wholly decided are let go (the files of
        them that were asked for stay until sent)."""
        with self._cv:
            if upto < self.decided_upto or upto > announced:
                raise ProtocolError(f"MANIFEST_ACK for {upto} entries, after {self.decided_upto} of {announced} sent")
            asked, before = self._asked, self.decided_upto
            if asked:  # the files asked for that this ack decides: counted from now on as kept besides
                if len(asked) < upto - before:
                    self._asked_decided += sum(1 for i in asked if before <= i < upto)
                else:
                    self._asked_decided += sum(1 for i in range(before, upto) if i in asked)
            self.decided_upto = upto
            batches = self._batches
            while batches and batches[0][0] + len(batches[0][1]) <= upto:
                self._in_batches -= len(batches.popleft()[1])
            self._cv.notify_all()

    def item_done(self, index: int) -> bool:
        """One work item of file ``index`` is done; True when it was the last (the file is let go)."""
        with self._cv:
            left = self._left.get(index, 0) - 1
            if left > 0:
                self._left[index] = left
                return False
            self._left.pop(index, None)
            if self._asked.pop(index, None) is not None and index < self.decided_upto:
                self._asked_decided -= 1
            self._cv.notify_all()
            return True

    def wait_room(self, check: Callable[[], None]) -> None:
        """Block the scan while the window is full; ``check`` raises to stop (cancel, a failed attempt), which
        ``wake`` (the sender's cancel and failure hook) makes it look at at once."""
        with self._cv:
            while self._in_batches + self._asked_decided >= self.window:
                check()
                self._cv.wait(_POLL)

    def wake(self) -> None:
        with self._cv:
            self._cv.notify_all()

    def __len__(self) -> int:
        return self._in_batches + self._asked_decided
