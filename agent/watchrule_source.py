"""The source side of one watch rule: a TreeWatcher whose change sets are shipped to every destination.

Each ``ChangeSet`` becomes one watch session per destination over the data plane (see
``zcrepl.agent.transfer.changes``); a ``rescan`` set becomes a full mirror of the tree (reconciliation).
Shipping runs on the watcher's coalescing thread, so events keep coalescing while a session is in flight
and a slow destination sees bigger sets. A failed session makes the watcher's next set a rescan, after a
backoff; a held rule (the controller's load policy) blocks shipping while changes keep collecting.

Tickets rotate within an epoch (``rotate``): a session tries the newest ticket first and, when the destination
refuses it at HELLO (it has not registered it yet; nothing was applied), the previous one; once a session is
accepted with the new ticket the previous one is forgotten. So a rotation never costs a reconciliation.
"""

from __future__ import annotations

import logging
import stat
import threading
import time
from dataclasses import replace

from zcrepl.agent import priority
from zcrepl.agent.transfer.cancel import Cancel
from zcrepl.agent.transfer.changes import ChangePlan
from zcrepl.agent.transfer.saferoot import SafeRoot
from zcrepl.agent.transfer.scan import tree_filter
from zcrepl.agent.transfer.send import Sender, SendSpec
from zcrepl.agent.transfer.sendio import Refused
from zcrepl.agent.transfer.tls import TlsContexts
from zcrepl.agent.watch import TreeWatcher
from zcrepl.agent.watch_coalesce import ChangeSet
from zcrepl.agent.watch_filter import filter_changes
from zcrepl.core.backoff import backoff_delay
from zcrepl.core.config import split_address
from zcrepl.core.errors import Cancelled, TransferError
from zcrepl.core.logs import kv, log_context
from zcrepl.core.paths import show
from zcrepl.core.watchtypes import WATCH_ID_BASE, WatchCounters, WatchDest, WatchSourceOrder, WatchStatus

log = logging.getLogger(__name__)

RESCAN_STREAMS = 2  # a reconciliation may move a whole tree; a change set rarely more than a few files...
BIG_SET = 64  # ...unless it is a burst: then creates in different directories run in parallel at the receiver


class _Stopped(Exception):
    pass


class ReleaseGate:
    """Whether a watch rule may ship now: the controller holds and releases it (load policy), and shipping
    waits at the gate. A wait ends when the rule is released or cancelled, woken by whichever did it."""

    def __init__(self, held: bool, cancel: Cancel) -> None:
        self._lock = threading.Lock()  # a hold must not clear the wake a concurrent cancellation just set
        self._cancel = cancel
        self._held = held
        self._open = threading.Event()
        if not held:
            self._open.set()
        cancel.on_set(self._wake)  # for the rule's lifetime: the Cancel is the rule's own

    @property
    def held(self) -> bool:
        return self._held

    def set_held(self, held: bool) -> bool:
        """Hold or release; returns whether that changed anything."""
        with self._lock:
            changed = held != self._held
            self._held = held
            if held and not self._cancel.is_set():
                self._open.clear()
            else:
                self._open.set()
        return changed

    def wait(self) -> bool:
        """Block while held; True once released, False if cancelled."""
        self._open.wait()
        return not self._cancel.is_set()

    def _wake(self) -> None:
        with self._lock:
            self._open.set()


class SourceRule:
    """Started by a WatchSourceOrder; ``stop`` ends it. ``status`` is read by the heartbeat thread."""

    def __init__(self, host: str, order: WatchSourceOrder, root: SafeRoot, watch_path: bytes, *,
                 io_timeout: float, backoff_max: float = 30.0, contexts: TlsContexts | None = None) -> None:
        self.host = host
        self.order = order
        self.contexts = contexts
        # Per destination host: its tickets, newest first (two while a rotation is not yet confirmed).
        self._tickets: dict[str, list[bytes]] = {d.host: [d.ticket] for d in order.dests}
        self.root = root  # confined source directory (the sender reads through it)
        self.label = f"{host}:{show(order.path)}"
        self.io_timeout = io_timeout
        self.backoff_max = backoff_max
        self._cancel = Cancel()  # wakes a running session's threads at once
        self._gate = ReleaseGate(order.held, self._cancel)
        self._lock = threading.Lock()
        self._counters = WatchCounters()
        self._failures = 0
        self._last_error = ""
        self._last_error_at = 0.0
        self._last_shipped_at = 0.0
        self._warning = ""
        self._shipping: ChangeSet | None = None
        self._reconciling = False
        self.watcher = TreeWatcher(watch_path, window=order.window, quiet=order.quiet, on_changes=self._ship,
                                   on_warning=self._warn)

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        with log_context(rule=self.order.rule_id, epoch=self.order.epoch):  # the watcher's threads keep it
            self.watcher.start()
        log.info("watch rule started", extra=kv(rule=self.order.rule_id, epoch=self.order.epoch, source=self.label,
                                                dests=",".join(d.host for d in self.order.dests)))

    def stop(self) -> None:
        self._cancel.set()  # also opens the gate
        self.watcher.stop()
        self.root.close()
        log.info("watch rule stopped", extra=kv(rule=self.order.rule_id, epoch=self.order.epoch))

    def hold(self, held: bool, reason: str) -> None:
        if self._gate.set_held(held):
            log.info("watch rule held" if held else "watch rule released",
                     extra=kv(rule=self.order.rule_id, reason=reason))

    def rotate(self, host: str, ticket: bytes) -> None:
        with self._lock:
            held = self._tickets.get(host)
            if held is not None:
                self._tickets[host] = [ticket, held[0]]
        log.info("watch rule ticket rotated", extra=kv(rule=self.order.rule_id, dest=host))

    def shipped_bytes(self) -> int:
        with self._lock:
            return self._counters.bytes

    def status(self) -> WatchStatus:
        now = time.monotonic()
        with self._lock:
            shipping = self._shipping
            counters, err, err_at, shipped = self._counters, self._last_error, self._last_error_at, \
                self._last_shipped_at
            reconciling, warning = self._reconciling, self._warning
        lag = self.watcher.lag()
        pending = self.watcher.pending()
        if shipping is not None:
            lag = max(lag, now - shipping.oldest) if shipping.oldest else lag
            pending += len(shipping)
        return WatchStatus(self.order.rule_id, self.order.epoch, watching=not self._cancel.is_set(), lag=lag,
                          pending=pending, held=self._gate.held, reconciling=reconciling, counters=counters,
                          last_error=err, last_error_at=err_at, last_shipped_at=shipped, warning=warning)

    # -- shipping (the watcher's coalescing thread) -----------------------------------------------------
    def _ship(self, cs: ChangeSet) -> None:
        cs = filter_changes(cs, tree_filter(self.root, self.order.options.filters, self.label), self._is_dir)
        if not len(cs):
            return  # only excluded paths changed
        with self._lock:
            self._shipping = cs
            self._reconciling = cs.rescan
        try:
            self._wait_released()
            priority.apply_to_this_thread()
            for dest in self.order.dests:
                self._ship_to(dest, cs)
            with self._lock:
                self._last_shipped_at = time.time()
                self._failures = 0
        except _Stopped:
            raise
        except Exception as err:  # a bug too: back off, then the watcher reconciles
            self._failed(err)
            raise
        finally:
            with self._lock:
                self._shipping = None
                self._reconciling = False

    def _is_dir(self, path: bytes) -> bool | None:
        try:
            st = self.root.lstat(tuple(path.split(b"/")))
        except (OSError, TransferError):
            return None
        return None if st is None else stat.S_ISDIR(st.st_mode)

    def _ship_to(self, dest: WatchDest, cs: ChangeSet) -> None:
        o = self.order
        plan = None if cs.rescan else ChangePlan(cs.renames, cs.deletes, cs.upserts)
        streams = o.options.streams or (RESCAN_STREAMS if cs.rescan or len(cs.upserts) > BIG_SET else 1)
        with self._lock:
            tickets = list(self._tickets.get(dest.host, [dest.ticket]))
        t0 = time.monotonic()
        for n, ticket in enumerate(tickets):
            spec = SendSpec(job_id=WATCH_ID_BASE + o.rule_id, attempt=o.epoch, ticket=ticket,
                            address=split_address(dest.data_address),
                            options=replace(o.options, streams=streams, encrypt=dest.encrypt), cancel=self._cancel,
                            on_progress=lambda _s: None, io_timeout=self.io_timeout, encrypt=dest.encrypt,
                            dest=dest.host, contexts=self.contexts)
            sender = Sender(spec, self.root, plan, tolerate_changed=True)
            try:
                stats = sender.run()
            except Cancelled:
                raise _Stopped() from None
            except Refused:
                if sender.controlled or n + 1 == len(tickets):
                    raise
                continue  # the destination has not registered the rotated ticket yet: the previous one
            if n == 0 and len(tickets) > 1:
                with self._lock:
                    if self._tickets.get(dest.host, [])[:1] == [ticket]:
                        self._tickets[dest.host] = [ticket]  # the rotation is confirmed
            break
        add = WatchCounters(sessions=1, changes=0 if cs.rescan else len(cs), files=stats.files_done,
                           bytes=stats.bytes_done, deleted=stats.deleted, renamed=sender.renamed,
                           reconciles=int(cs.rescan), skipped=stats.entries_skipped + stats.file_errors)
        with self._lock:
            self._counters = self._counters.plus(add)
            if stats.entries_skipped or stats.file_errors:
                # Not a failure (the rest shipped), but never silent: the rule shows it as its last error.
                what = (f"{stats.file_errors} files could not be read, " if stats.file_errors else "") + (
                    f"{stats.entries_skipped} entries skipped" if stats.entries_skipped else "")
                self._last_error = (f"{self.label} -> {dest.host}: {what.removesuffix(', ')}; last: "
                                    f"{sender.skips.last()}")
                self._last_error_at = time.time()
        log.debug("change set shipped", extra=kv(rule=o.rule_id, dest=dest.host, rescan=cs.rescan, items=len(cs),
                                                 files=stats.files_done, transport=stats.transport,
                                                 seconds=round(time.monotonic() - t0, 4)))

    def _wait_released(self) -> None:
        if not self._gate.wait():
            raise _Stopped()

    def _failed(self, err: BaseException) -> None:
        msg = f"{self.label}: {err}"
        with self._lock:
            self._failures += 1
            failures = self._failures
            self._last_error, self._last_error_at = msg, time.time()
            self._counters = self._counters.plus(WatchCounters(errors=1))
        delay = backoff_delay(failures, 0.5, self.backoff_max)
        log.warning("watch rule shipping failed; will reconcile", extra=kv(
            rule=self.order.rule_id, error=msg, retry_in=round(delay, 2)))
        # The watcher turns the raise into a rescan; waiting here first keeps a dead destination from
        # costing a full scan per event.
        self._cancel.wait(delay)

    def _warn(self, message: str) -> None:
        with self._lock:
            self._warning = message
        log.warning("watch warning", extra=kv(rule=self.order.rule_id, message=message))
