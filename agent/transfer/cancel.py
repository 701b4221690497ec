"""Cancellation that wakes threads: an Event whose ``set`` also runs what waiting parties registered.

A sender's threads block in recv, sendfile, a pacing wait or a wait for the receiver's hashes; a flag they
poll every few tenths of a second makes every cancel (and every transfer's end) wait that long. Instead the
sender registers what wakes each of them (shut its sockets, set the events they wait on) and ``set`` runs it
at once, on the cancelling thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class Cancel(threading.Event):
    def __init__(self) -> None:
        super().__init__()
        self._hooks: dict[int, Callable[[], None]] = {}
        self._next = 0
        self._hooks_lock = threading.Lock()

    def set(self) -> None:
        super().set()
        with self._hooks_lock:
            hooks = list(self._hooks.values())
        for hook in hooks:
            hook()

    def on_set(self, hook: Callable[[], None]) -> Callable[[], None]:
        """Run ``hook`` when this is set (now, if it is already); returns what unregisters it. One Cancel may
        outlive many attempts (a watch rule's), so each attempt unregisters its hooks when it ends."""
        with self._hooks_lock:
            key = self._next
            self._next += 1
            self._hooks[key] = hook
        if self.is_set():
            hook()

        def unregister() -> None:
            with self._hooks_lock:
                self._hooks.pop(key, None)

        return unregister
