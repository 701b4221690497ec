"""Cancellation wakes whoever waits, at once: hooks run on set, and a paused sender ends on cancel."""

from __future__ import annotations

import threading

from zcrepl.agent.transfer.cancel import Cancel
from zcrepl.agent.transfer.sendio import Pacer


def test_hooks_run_on_set_or_at_once_and_unregister() -> None:
    c = Cancel()
    calls: list[str] = []
    unregister = c.on_set(lambda: calls.append("a"))
    gone = c.on_set(lambda: calls.append("gone"))
    gone()
    assert calls == []
    c.set()
    assert calls == ["a"] and c.is_set()
    c.on_set(lambda: calls.append("late"))  # already set: runs now
    assert calls == ["a", "late"]
    unregister()
    c.set()
    assert calls == ["a", "late", "late"]


def test_a_paused_pacer_lets_go_when_its_sender_wakes_it() -> None:
    """Paused, a writer is held until the keepalive is due (set here to an hour): only a wake ends it early."""
    cancel = Cancel()
    pacer = Pacer(0, cancel)
    pacer.KEEPALIVE = 3600.0
    pacer.set(0, paused=True)
    held = threading.Thread(target=pacer.account, args=(1,))
    held.start()
    unhook = cancel.on_set(pacer.wake)
    cancel.set()
    held.join(60)
    unhook()
    assert not held.is_alive()
