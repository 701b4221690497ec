"""Watch rules on the controller: store them, deploy them to their agents, hold them by load, show them.

A rule is *deployed* with an epoch: every destination gets a WatchDestOrder with a fresh ticket, then the
source a WatchSourceOrder naming them all. Whenever one of its agents (re)connects, or the rule resumes, it
is deployed again with a new epoch; the source restarts its watcher, whose first change set is a full
reconciliation. So agent restarts, controller restarts and lost streams all end in a reconciliation.

A rule's tickets live ``sync_ticket_ttl`` seconds. At three quarters of that the controller rotates them
within the epoch (no reconciliation): each destination gets the new ticket next to the old one, which stays
valid until it expires, and the source switches to it from its next session on.
Runs on the engine's event loop (no locks).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from zcrepl.controller.dataplane import DataPlane
from zcrepl.controller.policy import Thresholds, host_blockers
from zcrepl.controller.registry import Registry, Session
from zcrepl.controller.scheduler import overlaps
from zcrepl.controller.watchrule_store import WatchRuleStore
from zcrepl.core.errors import InvalidPath, UnknownJob
from zcrepl.core.logs import kv
from zcrepl.core.types import Endpoint, HostHealth, JobOptions, Role
from zcrepl.core.watchtypes import (
    DEFAULT_QUIET,
    DEFAULT_WINDOW,
    WatchCounters,
    WatchDest,
    WatchDestOrder,
    WatchHoldOrder,
    WatchPhase,
    WatchRule,
    WatchSourceOrder,
    WatchState,
    WatchStatus,
    WatchStopOrder,
    WatchTicketOrder,
    watch_options,
)

log = logging.getLogger(__name__)
ROTATE_AT = 0.75  # of a ticket's lifetime: the rest is the overlap in which the old ticket still works
HOLD_EVERY = 1.0  # seconds between load checks of a deployed rule
SAVE_EVERY = 1.0  # at most one save of a rule's counters per second, and only when they moved


@dataclass
class _Live:
    """The controller's view of one active rule."""

    epoch: int = 0
    sessions: dict[str, int] = field(default_factory=dict)  # host -> session id it was deployed to
    waiting: str = ""  # why it is not deployed ("waiting: hostB offline")
    held: str = ""  # why its source holds ("" = shipping)
    checked_at: float = 0.0
    saved_at: float = 0.0
    dirty: bool = False  # counters or error moved since the last save
    status: WatchStatus | None = None
    base: WatchCounters = field(default_factory=WatchCounters)  # totals before this epoch
    tickets_at: float = 0.0  # when its destinations' current tickets were minted


class WatchRuleManager:
    def __init__(self, store: WatchRuleStore, registry: Registry, thresholds: Thresholds | None,
                 health: Callable[[str], HostHealth | None], unknown_host: Callable[[str], str],
                 dataplane: DataPlane | None = None) -> None:
        self.store = store
        self.registry = registry
        self.thresholds = thresholds
        self.health = health
        self.unknown_host = unknown_host
        self.dataplane = dataplane
        self.rules: dict[int, WatchRule] = {r.id: r for r in store.all()}
        self.live: dict[int, _Live] = {r.id: _Live(base=r.counters) for r in self.rules.values()}

    # -- operator -----------------------------------------------------------------------------------
    def create(self, src: Endpoint, dsts: list[Endpoint], options: JobOptions, window: float, quiet: float,
               now: float) -> WatchRule:
        if not dsts:
            raise InvalidPath("a watch rule needs at least one destination")
        for ep in (src, *dsts):
            if not self.registry.known(ep.host):
                raise InvalidPath(self.unknown_host(ep.host))
        if len({(d.host, d.path) for d in dsts}) != len(dsts):
            raise InvalidPath("the same destination appears twice")
        for d in dsts:
            if overlaps(src, d):
                raise InvalidPath(f"{src} and {d} overlap: a watched "
                                  "tree cannot contain its own copy")
        for r in self.rules.values():
            for d in dsts:
                for other in (r.source, *r.destinations):
                    if overlaps(d, other):
                        raise InvalidPath(f"{d} overlaps watch rule {r.id} "
                                          f"({other}); remove that rule first")
        if not 0.001 <= (window or DEFAULT_WINDOW) <= 60 or not 0 <= (quiet or DEFAULT_QUIET) <= 600:
            raise InvalidPath("--window must be within 1 ms..60 s and --quiet within 0..600 s")
        draft = WatchRule(0, src, tuple(dsts), watch_options(options), WatchState.ACTIVE, now,
                         window or DEFAULT_WINDOW, quiet or DEFAULT_QUIET)
        rule = self.store.create(src, tuple(dsts), draft)
        self.rules[rule.id] = rule
        self.live[rule.id] = _Live()
        log.info("watch rule created", extra=kv(rule=rule.id, source=str(src),
                                                dests=",".join(str(d) for d in dsts)))
        return self.view(rule.id, now)

    def pause(self, rule_id: int, now: float) -> WatchRule:
        rule = self._rule(rule_id)
        if rule.state is WatchState.ACTIVE:
            self._undeploy(rule, "paused by the operator")
            self._set_state(rule, WatchState.PAUSED)
        return self.view(rule_id, now)

    def resume(self, rule_id: int, now: float) -> WatchRule:
        rule = self._rule(rule_id)
        if rule.state is WatchState.PAUSED:
            self._set_state(rule, WatchState.ACTIVE)
        return self.view(rule_id, now)

    def remove(self, rule_id: int, now: float) -> WatchRule:
        rule = self._rule(rule_id)
        view = self.view(rule_id, now)
        self._undeploy(rule, "removed by the operator")
        self.store.remove(rule_id)
        del self.rules[rule_id]
        del self.live[rule_id]
        log.info("watch rule removed", extra=kv(rule=rule_id))
        return replace(view, phase=WatchPhase.REMOVED, status="removed")

    def list_rules(self, now: float) -> list[WatchRule]:
        return [self.view(i, now) for i in sorted(self.rules)]

    def view(self, rule_id: int, now: float) -> WatchRule:
        rule = self._rule(rule_id)
        live = self.live[rule_id]
        st = live.status
        counters, err, err_at = _totals(rule, live)
        phase, words = _phase(rule, live)
        return replace(rule, counters=counters, phase=phase, status=words, lag=st.lag if st else 0.0,
                       pending=st.pending if st else 0, last_error=err, last_error_at=err_at,
                       last_shipped_at=st.last_shipped_at if st else 0.0)

    # -- agents -------------------------------------------------------------------------------------
    def on_status(self, session: Session, statuses: list[WatchStatus], now: float) -> None:
        for st in statuses:
            rule = self.rules.get(st.rule_id)
            live = self.live.get(st.rule_id)
            if rule is None or live is None or rule.source.host != session.info.name or st.epoch != live.epoch:
                continue  # a rule removed meanwhile, or a late report of an earlier epoch
            moved = live.status is None or (st.counters, st.last_error) != (live.status.counters,
                                                                             live.status.last_error)
            live.status = st
            live.dirty |= moved
            if live.dirty and now - live.saved_at >= SAVE_EVERY:
                self._save(rule, live, now)

    def flush(self, now: float) -> None:
        """Save every rule whose counters moved since its last save (each tick, and at shutdown)."""
        for rule_id, live in self.live.items():
            if live.dirty:
                self._save(self.rules[rule_id], live, now)

    def tick(self, now: float) -> None:
        for rule_id, live in self.live.items():
            if live.dirty and now - live.saved_at >= SAVE_EVERY:
                self._save(self.rules[rule_id], live, now)
        for rule in list(self.rules.values()):
            if rule.state is not WatchState.ACTIVE:
                continue
            live = self.live[rule.id]
            hosts = (rule.source.host, *(d.host for d in rule.destinations))
            sessions = {h: self.registry.session(h) for h in hosts}
            missing = [h for h, s in sessions.items() if s is None or not self.registry.online(h, now)]
            if missing:
                if not live.waiting and live.sessions:
                    # A destination went away: the source holds (it keeps collecting); the redeploy that
                    # follows its return reconciles.
                    src = sessions[rule.source.host]
                    if src is not None:
                        src.outbox.put_nowait(WatchHoldOrder(rule.id, live.epoch, True,
                                                            f"{', '.join(missing)} offline"))
                live.waiting = f"waiting: {', '.join(missing)} offline"
                continue
            live.waiting = ""
            current = {h: s.id for h, s in sessions.items() if s is not None}
            if current != live.sessions:
                self._deploy(rule, live, sessions, now)  # type: ignore[arg-type]
            elif self.dataplane is not None and now - live.tickets_at >= ROTATE_AT * self.dataplane.ticket_ttl:
                self._rotate(rule, live, sessions, now)  # type: ignore[arg-type]
            elif now - live.checked_at >= HOLD_EVERY:
                self._check_load(rule, live, sessions[rule.source.host], now)  # type: ignore[arg-type]

    # -- internals ----------------------------------------------------------------------------------
    def _deploy(self, rule: WatchRule, live: _Live, sessions: dict[str, Session], now: float) -> None:
        if live.status is not None:
            live.base = live.base.plus(live.status.counters)
            live.status = None
        live.epoch = self.store.next_epoch(rule.id)
        live.sessions = {h: s.id for h, s in sessions.items()}
        live.held = self._blockers(rule, now)
        live.checked_at = now
        dests = []
        live.tickets_at = now
        for d in rule.destinations:
            ticket, encrypt = self._dest_ticket(rule, live, d, sessions[d.host])
            dests.append(WatchDest(d.host, sessions[d.host].info.data_address, ticket, d.path, encrypt))
        sessions[rule.source.host].outbox.put_nowait(WatchSourceOrder(
            rule.id, live.epoch, rule.source.path, rule.options, rule.window, rule.quiet, tuple(dests),
            held=bool(live.held), hold_reason=live.held))
        self._save(rule, live, now)
        log.info("watch rule deployed", extra=kv(rule=rule.id, epoch=live.epoch, held=live.held))

    def _dest_ticket(self, rule: WatchRule, live: _Live, d: Endpoint, dst: Session) -> tuple[bytes, bool]:
        """Mint a ticket for destination ``d`` and send it there (bound to the source agent); (ticket, encrypt)."""
        ticket = secrets.token_bytes(32)
        src = rule.source.host
        if self.dataplane is None:
            dst.outbox.put_nowait(WatchDestOrder(rule.id, live.epoch, d.path, rule.options, ticket, src))
            return ticket, rule.options.encrypt
        crypt = self.dataplane.encrypt(src, d.host, rule.options.encrypt)
        dst.outbox.put_nowait(WatchDestOrder(rule.id, live.epoch, d.path, replace(rule.options, encrypt=crypt.encrypt),
                                            ticket, src, self.dataplane.source_addresses(src),
                                            self.dataplane.ticket_ttl))
        return ticket, crypt.encrypt

    def _rotate(self, rule: WatchRule, live: _Live, sessions: dict[str, Session], now: float) -> None:
        """New tickets within the epoch: destinations first, then the source (which falls back to the old
        ticket should its next session reach a destination before the new one did)."""
        live.tickets_at = now
        for d in rule.destinations:
            ticket, _ = self._dest_ticket(rule, live, d, sessions[d.host])
            sessions[rule.source.host].outbox.put_nowait(WatchTicketOrder(rule.id, live.epoch, d.host, ticket))
        log.info("watch rule tickets rotated", extra=kv(rule=rule.id, epoch=live.epoch))

    def _check_load(self, rule: WatchRule, live: _Live, src: Session, now: float) -> None:
        live.checked_at = now
        why = self._blockers(rule, now)
        if bool(why) != bool(live.held):
            src.outbox.put_nowait(WatchHoldOrder(rule.id, live.epoch, bool(why), why))
            log.info("watch rule held" if why else "watch rule released", extra=kv(rule=rule.id, reason=why))
        live.held = why

    def _blockers(self, rule: WatchRule, now: float) -> str:
        t = self.thresholds
        if t is None:
            return ""
        why = host_blockers(rule.source.host, self.health(rule.source.host), t, role=Role.SENDER, now=now)
        for d in rule.destinations:
            why += host_blockers(d.host, self.health(d.host), t, role=Role.RECEIVER, path=d.path, now=now)
        return "; ".join(why)

    def _undeploy(self, rule: WatchRule, reason: str) -> None:
        live = self.live[rule.id]
        for host in {rule.source.host, *(d.host for d in rule.destinations)}:
            s = self.registry.session(host)
            if s is not None:
                s.outbox.put_nowait(WatchStopOrder(rule.id, reason))
        if live.status is not None:
            live.base = live.base.plus(live.status.counters)
            live.status = None
        live.sessions = {}
        live.held = ""
        self.store.save_progress(rule.id, live.base, rule.last_error, rule.last_error_at)

    def _save(self, rule: WatchRule, live: _Live, now: float) -> None:
        live.saved_at, live.dirty = now, False
        st = live.status
        counters, err, err_at = _totals(rule, live)
        if st is not None and st.last_error:
            self.rules[rule.id] = replace(rule, last_error=err, last_error_at=err_at)
        self.store.save_progress(rule.id, counters, err, err_at)

    def _set_state(self, rule: WatchRule, state: WatchState) -> None:
        self.store.set_state(rule.id, state)
        self.rules[rule.id] = replace(rule, state=state)

    def _rule(self, rule_id: int) -> WatchRule:
        rule = self.rules.get(rule_id)
        if rule is None:
            raise UnknownJob(f"no watch rule {rule_id}; zc-ctl syncs lists them")
        return rule


def _phase(rule: WatchRule, live: _Live) -> tuple[WatchPhase, str]:
    """The rule's phase and the sentence an operator reads for it."""
    st = live.status
    if rule.state is WatchState.PAUSED:
        return WatchPhase.PAUSED, "paused"
    if live.waiting:
        return WatchPhase.WAITING, live.waiting
    if st is None:
        return WatchPhase.STARTING, "starting"
    if not st.watching:
        return WatchPhase.FAILED, f"failed: {st.last_error}"
    if live.held and st.held:  # "held" promises changes are being collected: only once the source holds
        return WatchPhase.HELD, f"held: {live.held}"
    if st.reconciling:
        return WatchPhase.RECONCILING, "reconciling"
    return WatchPhase.WATCHING, "watching" + (f" ({st.warning})" if st.warning else "")


def _totals(rule: WatchRule, live: _Live) -> tuple[WatchCounters, str, float]:
    """Counters over the rule's life (earlier epochs + the current one) and its latest error."""
    st = live.status
    counters = live.base.plus(st.counters) if st is not None else live.base
    if st is not None and st.last_error:
        return counters, st.last_error, st.last_error_at
    return counters, rule.last_error, rule.last_error_at
