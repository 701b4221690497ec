"""Transfer threads lower their own CPU and I/O priority, and only their own."""

from __future__ import annotations

import os
import threading

import psutil

from zcrepl.agent import priority
from zcrepl.agent.priority import TransferPriority


def _in_thread(p: TransferPriority) -> tuple[int, object]:
    out: list[tuple[int, object]] = []

    def run() -> None:
        priority.apply_to_this_thread()
        tid = threading.get_native_id()
        out.append((os.getpriority(os.PRIO_PROCESS, tid), psutil.Process(tid).ionice()))

    old = priority._current
    priority.configure(p)
    try:
        t = threading.Thread(target=run)
        t.start()
        t.join()
    finally:
        priority.configure(old)
    return out[0]


def test_transfer_thread_is_niced_and_ioniced_but_the_agent_is_not() -> None:
    before = (os.getpriority(os.PRIO_PROCESS, 0), psutil.Process().ionice())
    nice, io = _in_thread(TransferPriority(nice=12, io_class="best-effort", io_level=6))
    assert nice == 12
    assert (io.ioclass, io.value) == (psutil.IOPRIO_CLASS_BE, 6)
    assert (os.getpriority(os.PRIO_PROCESS, 0), psutil.Process().ionice()) == before


def test_idle_class_and_unchanged_settings() -> None:
    _, io = _in_thread(TransferPriority(nice=0, io_class="idle"))
    assert io.ioclass == psutil.IOPRIO_CLASS_IDLE
    nice, io = _in_thread(TransferPriority(nice=0, io_class="none"))
    assert nice == os.getpriority(os.PRIO_PROCESS, 0)
