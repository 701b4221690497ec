"""The sender's side of a streamed manifest: which announced files it keeps, and how far it may run ahead.

The scan sends ENTRIES in batches of ``BATCH``; the receiver answers each batch with its NEEDs (and bases)
and then MANIFEST_ACK(n): the first n entries are decided. A file entry is kept from its announcement until
it is decided and not asked for, or asked for and sent (every work item of it done). The scan stops before
the next batch while ``WINDOW`` files or more are kept, so the sender holds at most ``WINDOW + BATCH`` file
entries, and the receiver at most as many needed files, whatever the tree's size: a no-change re-sync keeps
a few batches in flight, a first copy as many files as the data connections have queued.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from zcrepl.agent.transfer.frame import Entry, Kind
from zcrepl.core.errors import ProtocolError

__all__ = ["BATCH", "WINDOW", "FileWindow"]

BATCH = 512  # manifest entries per ENTRIES frame
WINDOW = 8192  # file entries the sender keeps (announced, not yet decided or sent) before the scan waits
_POLL = 1.0  # a safety net only: cancel and failure wake the waiting scan (``wake``)


class FileWindow:
    """File entries announced and still of use; thread-safe (scan, control reader and data workers)."""

    def __init__(self, window: int = 0) -> None:
        self.window = window or WINDOW
        self._files: dict[int, Entry] = {}
        self._undecided: deque[int] = deque()  # announced files, in order, until MANIFEST_ACK covers them
        self._left: dict[int, int] = {}  # asked files -> work items still to do
        self._cv = threading.Condition()
        self.decided_upto = 0
        self.peak = 0  # most file entries kept at once (for the tests and the bench)

    def announce_batch(self, first: int, batch: list[Entry]) -> None:
        """The files of a batch whose first entry is ``first`` are kept until decided or sent."""
        file = Kind.FILE
        with self._cv:
            files, undecided = self._files, self._undecided
            for index, e in enumerate(batch, first):
                if e.kind is file:
                    files[index] = e
                    undecided.append(index)
            self.peak = max(self.peak, len(files))

    def __getitem__(self, index: int) -> Entry:
        return self._files[index]

    def ask(self, index: int) -> Entry:
        """The receiver asked for file ``index`` (one work item unless ``expect`` says more)."""
        with self._cv:
            e = self._files.get(index)
            if e is None or index in self._left or index < self.decided_upto:
                raise ProtocolError(f"NEED for index {index}, which is not a file we announced, was asked already, "
                                    "or was decided in an earlier batch")
            self._left[index] = 1
            return e

    def expect(self, index: int, items: int) -> None:
        with self._cv:
            self._left[index] = items

    def decided(self, upto: int, announced: int) -> None:
        """MANIFEST_ACK: entries below ``upto`` are decided; files among them nobody asked for are let go."""
        with self._cv:
            if upto < self.decided_upto or upto > announced:
                raise ProtocolError(f"MANIFEST_ACK for {upto} entries, after {self.decided_upto} of {announced} sent")
            self.decided_upto = upto
            while self._undecided and self._undecided[0] < upto:
                index = self._undecided.popleft()
                if index not in self._left:
                    self._files.pop(index, None)
            self._cv.notify_all()

    def item_done(self, index: int) -> bool:
        """One work item of file ``index`` is done; True when it was the last (the entry is let go)."""
        with self._cv:
            left = self._left.get(index, 0) - 1
            if left > 0:
                self._left[index] = left
                return False
            self._left.pop(index, None)
            if index < self.decided_upto:
                self._files.pop(index, None)
            self._cv.notify_all()
            return True

    def wait_room(self, check: Callable[[], None]) -> None:
        """Block the scan while the window is full; ``check`` raises to stop (cancel, a failed attempt), which
        ``wake`` (the sender's cancel and failure hook) makes it look at at once."""
        with self._cv:
            while len(self._files) >= self.window:
                check()
                self._cv.wait(_POLL)

    def wake(self) -> None:
        with self._cv:
            self._cv.notify_all()

    def __len__(self) -> int:
        return len(self._files)
