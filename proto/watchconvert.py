"""Conversion between the watch-rule wire messages (watchrules.proto) and ``zcrepl.core.watchtypes``."""

from __future__ import annotations

from dataclasses import asdict

from zcrepl.core import watchtypes as st
from zcrepl.proto import watchrules_pb2 as spb
from zcrepl.proto.convert import endpoint_from_pb, endpoint_to_pb, options_from_pb, options_to_pb

_STATE_TO_PB = {st.WatchState.ACTIVE: spb.WATCH_STATE_ACTIVE, st.WatchState.PAUSED: spb.WATCH_STATE_PAUSED}
_STATE_FROM_PB = {v: k for k, v in _STATE_TO_PB.items()}
_PHASE_TO_PB = {p: spb.WatchPhase.Value(f"WATCH_PHASE_{p.name}") for p in st.WatchPhase}
_PHASE_FROM_PB = {v: k for k, v in _PHASE_TO_PB.items()}


def counters_to_pb(c: st.WatchCounters) -> spb.WatchCounters:
    return spb.WatchCounters(**asdict(c))


def counters_from_pb(m: spb.WatchCounters) -> st.WatchCounters:
    return st.WatchCounters(m.sessions, m.changes, m.files, m.bytes, m.deleted, m.renamed, m.reconciles, m.errors,
                           m.skipped)


def status_to_pb(s: st.WatchStatus) -> spb.WatchStatus:
    return spb.WatchStatus(rule_id=s.rule_id, epoch=s.epoch, watching=s.watching, lag=s.lag, pending=s.pending,
                          held=s.held, reconciling=s.reconciling, counters=counters_to_pb(s.counters),
                          last_error=s.last_error, last_error_at=s.last_error_at, last_shipped_at=s.last_shipped_at,
                          warning=s.warning)


def status_from_pb(m: spb.WatchStatus) -> st.WatchStatus:
    return st.WatchStatus(m.rule_id, m.epoch, m.watching, m.lag, m.pending, m.held, m.reconciling,
                         counters_from_pb(m.counters), m.last_error, m.last_error_at, m.last_shipped_at, m.warning)


def rule_to_pb(r: st.WatchRule) -> spb.WatchRule:
    return spb.WatchRule(
        id=r.id, source=endpoint_to_pb(r.source), destinations=[endpoint_to_pb(d) for d in r.destinations],
        options=options_to_pb(r.options), state=_STATE_TO_PB[r.state], created_at=r.created_at, window=r.window,
        quiet=r.quiet, counters=counters_to_pb(r.counters), status=r.status, lag=r.lag, pending=r.pending,
        last_error=r.last_error, last_error_at=r.last_error_at, last_shipped_at=r.last_shipped_at,
        phase=_PHASE_TO_PB[r.phase],
    )


def rule_from_pb(m: spb.WatchRule) -> st.WatchRule:
    return st.WatchRule(
        id=m.id, source=endpoint_from_pb(m.source), destinations=tuple(endpoint_from_pb(d) for d in m.destinations),
        options=options_from_pb(m.options), state=_STATE_FROM_PB.get(m.state, st.WatchState.ACTIVE),
        created_at=m.created_at, window=m.window, quiet=m.quiet, counters=counters_from_pb(m.counters),
        status=m.status, lag=m.lag, pending=m.pending, last_error=m.last_error, last_error_at=m.last_error_at,
        last_shipped_at=m.last_shipped_at, phase=_PHASE_FROM_PB.get(m.phase, st.WatchPhase.STARTING),
    )


def source_order_to_pb(o: st.WatchSourceOrder) -> spb.WatchSourceOrder:
    return spb.WatchSourceOrder(
        rule_id=o.rule_id, epoch=o.epoch, path=o.path, options=options_to_pb(o.options), window=o.window,
        quiet=o.quiet, held=o.held, hold_reason=o.hold_reason,
        dests=[spb.WatchDest(host=d.host, data_address=d.data_address, ticket=d.ticket, path=d.path,
                            encrypt=d.encrypt) for d in o.dests],
    )


def source_order_from_pb(m: spb.WatchSourceOrder) -> st.WatchSourceOrder:
    return st.WatchSourceOrder(
        m.rule_id, m.epoch, bytes(m.path), options_from_pb(m.options), m.window, m.quiet,
        tuple(st.WatchDest(d.host, d.data_address, bytes(d.ticket), bytes(d.path), d.encrypt) for d in m.dests),
        m.held, m.hold_reason,
    )


def dest_order_to_pb(o: st.WatchDestOrder) -> spb.WatchDestOrder:
    return spb.WatchDestOrder(rule_id=o.rule_id, epoch=o.epoch, path=o.path, options=options_to_pb(o.options),
                             ticket=o.ticket, source_host=o.source_host, source_addresses=list(o.source_addresses),
                             ticket_ttl=o.ticket_ttl)


def dest_order_from_pb(m: spb.WatchDestOrder) -> st.WatchDestOrder:
    return st.WatchDestOrder(m.rule_id, m.epoch, bytes(m.path), options_from_pb(m.options), bytes(m.ticket),
                            m.source_host, tuple(m.source_addresses), m.ticket_ttl)


def ticket_order_from_pb(m: spb.WatchTicketOrder) -> st.WatchTicketOrder:
    return st.WatchTicketOrder(m.rule_id, m.epoch, m.host, bytes(m.ticket))
