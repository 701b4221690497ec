"""One receive attempt on the destination agent once the source connected: serve it, then report the outcome."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from zcrepl.agent.transfer import frame as fr
from zcrepl.agent.transfer.channel import Channel
from zcrepl.agent.transfer.failure import explain
from zcrepl.agent.transfer.frame import Hello
from zcrepl.agent.transfer.jobdirs import no_space
from zcrepl.agent.transfer.partial import drop_partials
from zcrepl.agent.transfer.plan import PlanWriter
from zcrepl.agent.transfer.receive import ReceiveSession
from zcrepl.agent.transfer.saferoot import SafeRoot
from zcrepl.agent.transfer.snapshot import NoSnapshot, Snapshot
from zcrepl.core.errors import ZcError
from zcrepl.core.logs import kv
from zcrepl.core.types import Phase, ReceiveOrder, Role, TransferReport, TransferStats

if TYPE_CHECKING:
    from zcrepl.agent.attempts import Attempts

log = logging.getLogger(__name__)


def run_receive(t: Attempts, order: ReceiveOrder, root: SafeRoot, rel: tuple[bytes, ...], label: str, ch: Channel,
                hello: Hello, session: ReceiveSession, snap: Snapshot | NoSnapshot) -> None:
    """Serves the source's control connection, then reports the outcome: done (the snapshot completed, stale
    partials dropped) or failed (with the partials kept for the next attempt unless the operator discarded them)."""
    key = (order.job_id, order.attempt, Role.RECEIVER)
    t0 = time.monotonic()
    try:
        stats = session.serve_control(ch, hello)
    except Exception as err:  # any exception, a bug's too, fails the attempt now (not at the stall timeout)
        f = explain(err, io_timeout=t.io_timeout, between=f"{order.source_host} and {t.host}",
                    full=lambda why: no_space(session.writer, root, why))
        msg, retryable = f.message, f.retryable
        if f.unexpected:
            log.exception("receive crashed", extra=kv(job=order.job_id, attempt=order.attempt))
        if not f.cancelled:
            with contextlib.suppress(OSError):
                ch.send(fr.encode_text(fr.T.ABORT, msg))
        log.warning("receive failed", extra=kv(job=order.job_id, attempt=order.attempt, error=msg))
        t._forget(key)
        if session.writer is not None and session.writer.saved_partials:
            t._keep_partials((order.job_id, order.attempt), (root, rel, session.writer.saved_partials))
        stats = session.stats() if session.writer is not None else TransferStats()
        where = f"{label} <- {order.source_host}"
        t._fail(order.job_id, order.attempt, Role.RECEIVER,
                   where + msg[len(label):] if msg.startswith(label) else f"{where}: {msg}",
                   retryable=retryable, stats=stats)
        return
    t._forget(key)
    assert session.writer is not None
    if stats.errors and session.writer.no_space:
        why = f"{stats.errors} entries failed; first: {session.writer.first_error}"
        t._fail(order.job_id, order.attempt, Role.RECEIVER, f"{label}: {no_space(session.writer, root, why)}",
                   retryable=False, stats=stats)
        return
    if stats.errors:
        t._fail(order.job_id, order.attempt, Role.RECEIVER,
                   f"{stats.errors} entries failed; first: {session.writer.first_error}", retryable=True,
                   stats=stats)
        return
    # Whatever is left in the partial area belongs to files this tree no longer needs: deleted at the
    # source, or replaced by a newer version that arrived whole.
    if not order.options.dry_run:
        drop_partials(root, rel, None)
    try:
        stats = replace(stats, pruned=snap.complete())
    except (ZcError, OSError) as err:
        f = explain(err, io_timeout=t.io_timeout)
        t._fail(order.job_id, order.attempt, Role.RECEIVER, f"{label}: {f.message}", retryable=f.retryable,
                   stats=stats)
        return
    log.info("receive done", extra=kv(job=order.job_id, attempt=order.attempt, files=stats.files_done,
                                      bytes=stats.bytes_done, skipped=stats.files_skipped,
                                      transport=stats.transport, source=ch.peer.address if ch.peer else "",
                                      deleted=stats.deleted, seconds=round(time.monotonic() - t0, 3)))
    plan = tuple(session.writer.items) if isinstance(session.writer, PlanWriter) else ()
    t.report(TransferReport(order.job_id, order.attempt, Role.RECEIVER, Phase.DONE, stats, plan=plan))
