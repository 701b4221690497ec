"""The same-host attempt: source and destination are both this agent, so the copy runs in the kernel here."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from zcrepl.agent import priority
from zcrepl.agent.attempt_state import Active, Key
from zcrepl.agent.transfer.failure import explain
from zcrepl.agent.transfer.jobdirs import resolve_dirs
from zcrepl.agent.transfer.local import LocalCopy, log_local
from zcrepl.agent.transfer.saferoot import SafeRoot
from zcrepl.agent.transfer.snapshot import begin_snapshot, job_rel
from zcrepl.core.errors import TransferError
from zcrepl.core.logs import kv
from zcrepl.core.paths import show
from zcrepl.core.types import Phase, Role, SendOrder, TransferReport

if TYPE_CHECKING:
    from zcrepl.agent.attempts import Attempts

log = logging.getLogger(__name__)


def run_local(t: Attempts, order: SendOrder, src: SafeRoot, key: Key, label: str, active: Active,
              older: list[threading.Event]) -> None:
    """Both ends are this agent: copy in the kernel, then answer for both roles (the thread of a same-host send)."""
    priority.apply_to_this_thread()
    t.tickets.revoke(order.job_id, order.attempt)  # nobody will connect
    t._forget((order.job_id, order.attempt, Role.RECEIVER))
    dst_label = f"{t.host}:{show(order.dest_path)}"
    t0 = time.monotonic()
    try:
        if t.sweeper is not None and not order.options.dry_run:
            t.sweeper.request(*t.exports.resolve(order.dest_path))
        deadline = t0 + t.io_timeout
        for e in older:  # this thread is the writer: never while an older attempt still is
            e.wait(max(0.0, deadline - time.monotonic()))
        if not all(e.is_set() for e in older):
            raise TransferError(f"an older attempt of job {order.job_id} is still stopping here after "
                                f"{t.io_timeout:g}s; the next attempt will try again")
        root, rel = t.exports.resolve(order.dest_path)
        rel = job_rel(rel, order.options)
        with contextlib.closing(begin_snapshot(root, rel, order.options, dst_label)) as snap:
            copier = LocalCopy(order.job_id, src, root, rel, order.options, dst_label, active.cancel,
                               lambda s: t.report(TransferReport(order.job_id, order.attempt, Role.SENDER,
                                                                    Phase.PROGRESS, s)),
                               workers=order.options.streams or 2, policy=t.exports.policy(root),
                               limits=t.limits, dirs=snap.dirs(resolve_dirs(t.exports.resolve,
                                                                                order.options)))
            stats = copier.run()
            if not stats.errors:
                stats = replace(stats, pruned=snap.complete())
    except Exception as err:  # a bug must fail the attempt now, not leave it to the stall timeout
        t._forget(key)
        f = explain(err, io_timeout=t.io_timeout)
        if f.cancelled:
            return
        if f.unexpected:
            log.exception("local copy crashed", extra=kv(job=order.job_id))
        t._fail(order.job_id, order.attempt, Role.SENDER, f"{label} -> {dst_label}: {f.message}",
                   retryable=f.retryable)
        return
    finally:
        src.close()
    t._forget(key)
    skipped = tuple(copier.skips.listed)
    if stats.errors:
        t._fail(order.job_id, order.attempt, Role.SENDER, f"{stats.errors} entries failed copying "
                   f"{label} -> {dst_label}; see the agent log", retryable=True, stats=stats, skipped=skipped)
        return
    log_local(order.job_id, stats, time.monotonic() - t0)
    # One scan serves both roles: its skipped entries are reported once, by the sender.
    t.report(TransferReport(order.job_id, order.attempt, Role.RECEIVER, Phase.DONE,
                               replace(stats, entries_skipped=0, skipped_special=0, file_errors=0),
                               plan=copier.plan))
    t.report(TransferReport(order.job_id, order.attempt, Role.SENDER, Phase.DONE, stats, skipped=skipped))
