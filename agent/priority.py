"""CPU and I/O priority of transfer threads: background replication yields to the host's real work.

Linux schedules threads, so ``setpriority(PRIO_PROCESS, tid)`` and ``ioprio_set`` (psutil's ionice on a
thread id) lower only the calling transfer thread; the agent's gRPC and health threads keep their
priority and stay responsive. A thread can always lower its own priority; raising it back would need
CAP_SYS_NICE, which is why every transfer runs on a fresh thread.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

import psutil

from zcrepl.core.logs import kv

log = logging.getLogger(__name__)

IO_CLASSES = {"none": None, "best-effort": psutil.IOPRIO_CLASS_BE, "idle": psutil.IOPRIO_CLASS_IDLE}


@dataclass(frozen=True)
class TransferPriority:
    nice: int = 10  # 0 keeps the agent's own; 19 is the lowest
    io_class: str = "best-effort"  # "none" keeps the agent's own, "idle" only uses an otherwise idle disk
    io_level: int = 7  # best-effort level 0 (high) .. 7 (low)


_current = TransferPriority()
_warned = False


def configure(p: TransferPriority) -> None:
    """Set once at agent start (AgentConfig.validate has checked the values)."""
    global _current
    _current = p


def apply_to_this_thread() -> None:
    """Lower the calling (transfer) thread to the configured CPU and I/O priority; never fails a transfer."""
    global _warned
    tid = threading.get_native_id()
    p = _current
    try:
        if p.nice:
            os.setpriority(os.PRIO_PROCESS, tid, max(p.nice, os.getpriority(os.PRIO_PROCESS, tid)))
        io = IO_CLASSES[p.io_class]
        if io is not None:
            proc = psutil.Process(tid)
            if io == psutil.IOPRIO_CLASS_IDLE:
                proc.ionice(io)
            else:
                proc.ionice(io, p.io_level)
    except (OSError, psutil.Error, ValueError) as err:
        if not _warned:
            _warned = True
            log.warning("cannot lower transfer priority", extra=kv(error=err))
