"""Tests for zcrepl.agent.watchrule_source's ReleaseGate: a held watch rule's shipping is woken by the release or by
cancellation (threads blocked at the gate, a real Cancel), not by a poll."""

from __future__ import annotations

import threading

from zcrepl.agent.transfer.cancel import Cancel
from zcrepl.agent.watchrule_source import ReleaseGate

JOIN = 10.0  # only bounds a hung test; the wake itself is immediate


def _waiter(gate: ReleaseGate) -> tuple[threading.Thread, list[bool], threading.Event]:
    got: list[bool] = []
    entered = threading.Event()

    def run() -> None:
        entered.set()
        got.append(gate.wait())

    t = threading.Thread(target=run, daemon=True)
    t.start()
    entered.wait(JOIN)
    return t, got, entered


def test_a_released_gate_does_not_block() -> None:
    gate = ReleaseGate(False, Cancel())
    assert gate.wait() is True
    assert gate.held is False


def test_release_wakes_a_held_wait() -> None:
    gate = ReleaseGate(True, Cancel())
    t, got, _ = _waiter(gate)
    assert got == [] and t.is_alive()  # held: it waits
    assert gate.set_held(False) is True
    t.join(JOIN)
    assert got == [True] and not t.is_alive()
    assert gate.set_held(False) is False  # no change


def test_cancellation_wakes_a_held_wait_and_a_later_hold_does_not_close_it() -> None:
    cancel = Cancel()
    gate = ReleaseGate(True, cancel)
    t, got, _ = _waiter(gate)
    cancel.set()
    t.join(JOIN)
    assert got == [False] and not t.is_alive()
    assert gate.set_held(True) is False  # still held, and a cancelled rule never blocks again
    assert gate.wait() is False


def test_hold_after_release_blocks_again() -> None:
    gate = ReleaseGate(False, Cancel())
    assert gate.set_held(True) is True and gate.held
    t, got, _ = _waiter(gate)
    assert got == []
    gate.set_held(False)
    t.join(JOIN)
    assert got == [True]
