"""The watch rules an agent takes part in: sources it watches and ships from, destinations it accepts.

Orders come from the controller (start with a new epoch, hold/release, rotate tickets, stop). Rules keep
running while the controller is away, until their tickets expire (``sync_ticket_ttl``); when it comes back it
re-sends them with a new epoch, which restarts the watcher and so reconciles the trees.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time

from zcrepl.agent.attempts import check_destination, open_source
from zcrepl.agent.exports import Exports
from zcrepl.agent.transfer import frame as fr
from zcrepl.agent.transfer.channel import Channel
from zcrepl.agent.transfer.failure import explain
from zcrepl.agent.transfer.frame import Hello
from zcrepl.agent.transfer.leftovers import Sweeper
from zcrepl.agent.transfer.limits import SessionLimits
from zcrepl.agent.transfer.peer import Binding, resolve
from zcrepl.agent.transfer.receive import ReceiveSession, ReceiveSpec
from zcrepl.agent.transfer.server import DataServer, Grant, TicketBook
from zcrepl.agent.transfer.tls import TlsContexts
from zcrepl.agent.watchrule_source import SourceRule
from zcrepl.core.errors import ZcError
from zcrepl.core.logs import kv
from zcrepl.core.paths import show
from zcrepl.core.watchtypes import (
    WATCH_ID_BASE,
    WatchCounters,
    WatchDestOrder,
    WatchHoldOrder,
    WatchSourceOrder,
    WatchStatus,
    WatchStopOrder,
    WatchTicketOrder,
)

log = logging.getLogger(__name__)


class WatchRules:
    def __init__(self, host: str, exports: Exports, data: DataServer, tickets: TicketBook, *,
                 limits: SessionLimits, sweeper: Sweeper | None = None) -> None:
        self.host = host
        self.sweeper = sweeper
        self.limits = limits
        self.exports = exports
        self.data = data
        self.tickets = tickets
        self.io_timeout = data.io_timeout  # the agent's one io_timeout, for sends too
        self.contexts: TlsContexts | None = data.tls
        self._lock = threading.Lock()
        self._sources: dict[int, SourceRule] = {}
        self._failed: dict[int, WatchStatus] = {}  # rules that could not start here, reported until replaced
        self._dests: dict[int, int] = {}  # rule id -> epoch accepted
        self._retired_bytes = 0  # bytes shipped by source rules stopped since the agent started
        self._retired_watch = (0, 0)  # (events, sets) of their watchers

    # -- orders -------------------------------------------------------------------------------------
    def source(self, order: WatchSourceOrder) -> None:
        self._stop_source(order.rule_id)
        label = f"{self.host}:{show(order.path)}"
        try:
            export, rel = self.exports.resolve(order.path)
            root = open_source(export, rel, label)
        except ZcError as err:
            self._refuse(order.rule_id, order.epoch, str(err))
            return
        watch_path = export.path + (b"/" + b"/".join(rel) if rel else b"")
        rule = SourceRule(self.host, order, root, watch_path, io_timeout=self.io_timeout, contexts=self.contexts)
        try:
            rule.start()
        except OSError as err:
            root.close()
            self._refuse(order.rule_id, order.epoch, f"{label}: cannot watch: {err.strerror or err}")
            return
        with self._lock:
            self._sources[order.rule_id] = rule
            self._failed.pop(order.rule_id, None)

    def dest(self, order: WatchDestOrder) -> None:
        job_id = WATCH_ID_BASE + order.rule_id
        with self._lock:
            rotation = self._dests.get(order.rule_id) == order.epoch
        if not rotation:
            self.tickets.revoke(job_id, reusable=True)  # the rule's earlier epoch
        # else: a rotated ticket joins the current one, which expires on its own (the overlap)
        expires = time.monotonic() + order.ticket_ttl if order.ticket_ttl > 0 else math.inf
        bind = Binding(order.source_host, resolve(order.source_addresses), order.options.encrypt)
        label = f"{self.host}:{show(order.path)}"
        try:
            export, rel = self.exports.resolve(order.path)
            check_destination(export, rel, label)
        except ZcError as err:
            # The source reports the rule's errors: its sessions are refused with this reason.
            log.warning("watch rule destination refused", extra=kv(rule=order.rule_id, error=str(err)))
            reason = str(err)

            def refuse(ch: Channel, _hello: Hello) -> None:
                ch.send(fr.encode_text(fr.T.REFUSE, reason))

            self.tickets.register(order.ticket, Grant(job_id, order.epoch, expires, refuse, reusable=True, bind=bind))
            with self._lock:
                self._dests[order.rule_id] = order.epoch
            return

        def serve(ch: Channel, hello: Hello) -> None:
            if self.sweeper is not None:  # what dead sessions left here goes (at most once a minute)
                self.sweeper.request(export, rel)
            spec = ReceiveSpec(job_id, order.epoch, export, rel, order.options, label,
                               policy=self.exports.policy(export), limits=self.limits, bind=bind)
            try:
                ReceiveSession(spec, self.tickets).serve_control(ch, hello)
            except Exception as err:  # the source reports it as the rule's last error
                f = explain(err, io_timeout=self.io_timeout, between=f"{order.source_host} and {self.host}")
                if f.unexpected:
                    log.exception("watch session crashed", extra=kv(rule=order.rule_id))
                log.warning("watch session failed", extra=kv(rule=order.rule_id, error=f.message))
                with contextlib.suppress(OSError):
                    ch.send(fr.encode_text(fr.T.ABORT, f"{label}: {f.message}"))

        self.tickets.register(order.ticket, Grant(job_id, order.epoch, expires, serve, reusable=True, bind=bind))
        with self._lock:
            self._dests[order.rule_id] = order.epoch
        log.info("watch rule ticket added" if rotation else "watch rule destination ready",
                 extra=kv(rule=order.rule_id, epoch=order.epoch, path=label, source=order.source_host,
                          encrypt=order.options.encrypt, ttl=order.ticket_ttl))

    def rotate(self, order: WatchTicketOrder) -> None:
        """The controller rotated a destination's ticket: ship with the new one from the next session on."""
        with self._lock:
            rule = self._sources.get(order.rule_id)
        if rule is not None and rule.order.epoch == order.epoch:
            rule.rotate(order.host, order.ticket)

    def hold(self, order: WatchHoldOrder) -> None:
        with self._lock:
            rule = self._sources.get(order.rule_id)
        if rule is not None and rule.order.epoch == order.epoch:
            rule.hold(order.held, order.reason)

    def stop(self, order: WatchStopOrder) -> None:
        self._stop_source(order.rule_id)
        with self._lock:
            self._failed.pop(order.rule_id, None)
            epoch = self._dests.pop(order.rule_id, None)
        if epoch is not None:
            job_id = WATCH_ID_BASE + order.rule_id
            self.tickets.revoke(job_id, reusable=True)
            self.data.abort(job_id, epoch)
            log.info("watch rule destination stopped", extra=kv(rule=order.rule_id, reason=order.reason))

    def stop_all(self) -> None:
        with self._lock:
            ids = set(self._sources) | set(self._dests)
        for rule_id in ids:
            self.stop(WatchStopOrder(rule_id, "agent shutting down"))

    # -- reports ------------------------------------------------------------------------------------
    def statuses(self) -> list[WatchStatus]:
        with self._lock:
            rules = list(self._sources.values())
            failed = list(self._failed.values())
        return [r.status() for r in rules] + failed

    def bytes_moved(self) -> int:
        """File bytes shipped by this agent's watch rules since it started (a counter, for health)."""
        with self._lock:
            return self._retired_bytes + sum(r.shipped_bytes() for r in self._sources.values())

    def watch_counts(self) -> tuple[int, int]:
        """(file system events seen, change sets released) by this agent's watchers since it started."""
        with self._lock:
            watchers = [r.watcher for r in self._sources.values()]
            events, sets = self._retired_watch
        return events + sum(w.events_seen for w in watchers), sets + sum(w.sets_released for w in watchers)

    # -- internals ----------------------------------------------------------------------------------
    def _stop_source(self, rule_id: int) -> None:
        with self._lock:
            rule = self._sources.pop(rule_id, None)
        if rule is not None:
            rule.stop()
            with self._lock:
                self._retired_bytes += rule.shipped_bytes()
                events, sets = self._retired_watch
                self._retired_watch = (events + rule.watcher.events_seen, sets + rule.watcher.sets_released)

    def _refuse(self, rule_id: int, epoch: int, error: str) -> None:
        log.warning("watch rule cannot start", extra=kv(rule=rule_id, error=error))
        with self._lock:
            self._failed[rule_id] = WatchStatus(rule_id, epoch, watching=False, last_error=error,
                                               last_error_at=time.time(), counters=WatchCounters(errors=1))
