"""Budgets for strangers at the data port: connections that have not shown a ticket yet.

Such a connection may wait only ``timeout`` seconds from accept for its whole handshake, however its bytes
trickle in, and only so many may wait at once, overall and per source address. Authenticated transfers
never share these places (the server counts them apart), so strangers cannot take what a real job needs.

When a newcomer finds the budget full, the oldest waiting connection of the source holding the most
waiting connections is dropped to make room (of the newcomer's own source, when that source is over its
share). A stranger trickling a HELLO keeps its place only until newer connections arrive, while a real
sender, whose HELLO follows its connect at once, is through long before it becomes the oldest.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from zcrepl.agent.transfer import frame as fr
from zcrepl.agent.transfer.channel import shut


@dataclass(eq=False)
class Waiting:
    sock: socket.socket
    source: str
    deadline: float
    why: str = ""  # set when we dropped it


class Admission:
    def __init__(self, max_pending: int, max_per_source: int, timeout: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_pending = max_pending
        self.max_per_source = max_per_source
        self.timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._waiting: dict[socket.socket, Waiting] = {}  # insertion order is age
        self._per_source: dict[str, int] = {}
        self._dropped: dict[socket.socket, str] = {}

    def admit(self, sock: socket.socket, source: str) -> list[Waiting]:
        """Start the clock for a new connection; returns the connections dropped to make room for it."""
        with self._lock:
            dropped = []
            if self._per_source.get(source, 0) >= self.max_per_source:
                dropped.append(self._drop(self._oldest(source), f"more than {self.max_per_source} connections "
                                          f"from {source} without a ticket"))
            elif len(self._waiting) >= self.max_pending:
                dropped.append(self._drop(self._oldest(self._busiest()), f"more than {self.max_pending} "
                                          "connections without a ticket"))
            self._waiting[sock] = Waiting(sock, source, self._clock() + self.timeout)
            self._per_source[source] = self._per_source.get(source, 0) + 1
            return dropped

    def settle(self, sock: socket.socket) -> str:
        """The handshake of ``sock`` ended (HELLO read, or failed): it stops waiting. Returns why we dropped
        it earlier ("" if we did not). Must be called before the socket is closed."""
        with self._lock:
            if self._waiting.get(sock) is not None:
                self._forget(sock)
            return self._dropped.pop(sock, "")

    def expire(self) -> list[Waiting]:
        """Drop every connection whose handshake deadline has passed."""
        now = self._clock()
        with self._lock:
            late = [w for w in self._waiting.values() if w.deadline <= now]
            return [self._drop(w, f"no complete HELLO within {self.timeout:g}s") for w in late]

    def next_deadline(self) -> float | None:
        with self._lock:
            return min((w.deadline for w in self._waiting.values()), default=None)

    def count(self) -> int:
        with self._lock:
            return len(self._waiting)

    # -- under the lock -----------------------------------------------------------------------------
    def _busiest(self) -> str:
        top = max(self._per_source.values())
        return next(w.source for w in self._waiting.values() if self._per_source[w.source] == top)

    def _oldest(self, source: str) -> Waiting:
        return next(w for w in self._waiting.values() if w.source == source)

    def _forget(self, sock: socket.socket) -> None:
        w = self._waiting.pop(sock)
        left = self._per_source[w.source] - 1
        if left:
            self._per_source[w.source] = left
        else:
            del self._per_source[w.source]

    def _drop(self, w: Waiting, why: str) -> Waiting:
        # Under the lock, and before settle() lets the owner close it: the socket is still open here.
        self._forget(w.sock)
        w.why = why
        self._dropped[w.sock] = why
        with contextlib.suppress(OSError):
            w.sock.send(fr.encode_text(fr.T.REFUSE, why), socket.MSG_DONTWAIT)
        shut(w.sock)
        return w
