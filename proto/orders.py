"""Orders <-> ControllerMessage, both ways, in one place (core/orders.py has the types)."""

from __future__ import annotations

from zcrepl.core.orders import Order
from zcrepl.core.types import CancelOrder, ReceiveOrder, SendOrder, ThrottleOrder
from zcrepl.core.watchtypes import WatchDestOrder, WatchHoldOrder, WatchSourceOrder, WatchStopOrder, WatchTicketOrder
from zcrepl.proto import controller_pb2 as cpb
from zcrepl.proto import watchrules_pb2 as spb
from zcrepl.proto.convert import options_from_pb, options_to_pb
from zcrepl.proto.watchconvert import (
    dest_order_from_pb,
    dest_order_to_pb,
    source_order_from_pb,
    source_order_to_pb,
    ticket_order_from_pb,
)


def order_to_pb(order: Order) -> cpb.ControllerMessage:
    match order:
        case ReceiveOrder():
            return cpb.ControllerMessage(receive=cpb.ReceiveOrder(
                job_id=order.job_id, attempt=order.attempt, ticket=order.ticket, path=order.path,
                options=options_to_pb(order.options), source_host=order.source_host,
                source_addresses=list(order.source_addresses)))
        case SendOrder():
            return cpb.ControllerMessage(send=cpb.SendOrder(
                job_id=order.job_id, attempt=order.attempt, ticket=order.ticket, path=order.path,
                options=options_to_pb(order.options), dest_host=order.dest_host,
                dest_data_address=order.dest_data_address, dest_path=order.dest_path))
        case ThrottleOrder():
            return cpb.ControllerMessage(throttle=cpb.ThrottleOrder(
                job_id=order.job_id, attempt=order.attempt, bwlimit=order.bwlimit, paused=order.paused,
                reason=order.reason))
        case CancelOrder():
            return cpb.ControllerMessage(cancel=cpb.CancelOrder(
                job_id=order.job_id, attempt=order.attempt, reason=order.reason,
                discard_partial=order.discard_partial))
        case WatchSourceOrder():
            return cpb.ControllerMessage(watch_source=source_order_to_pb(order))
        case WatchDestOrder():
            return cpb.ControllerMessage(watch_dest=dest_order_to_pb(order))
        case WatchStopOrder():
            return cpb.ControllerMessage(watch_stop=spb.WatchStopOrder(rule_id=order.rule_id, reason=order.reason))
        case WatchTicketOrder():
            return cpb.ControllerMessage(watch_ticket=spb.WatchTicketOrder(
                rule_id=order.rule_id, epoch=order.epoch, host=order.host, ticket=order.ticket))
        case WatchHoldOrder():
            return cpb.ControllerMessage(watch_hold=spb.WatchHoldOrder(
                rule_id=order.rule_id, epoch=order.epoch, held=order.held, reason=order.reason))
    raise TypeError(f"not an order: {order!r}")


def order_from_pb(msg: cpb.ControllerMessage) -> Order | None:
    """The order a message carries; None for a message that is not an order (the welcome) or of a kind this
    agent does not know (a newer controller's: ignored, like an unknown field)."""
    kind = msg.WhichOneof("kind")
    if kind == "receive":
        r = msg.receive
        return ReceiveOrder(r.job_id, r.attempt, bytes(r.ticket), bytes(r.path), options_from_pb(r.options),
                            r.source_host, tuple(r.source_addresses))
    if kind == "send":
        s = msg.send
        return SendOrder(s.job_id, s.attempt, bytes(s.ticket), bytes(s.path), options_from_pb(s.options),
                         s.dest_host, s.dest_data_address, bytes(s.dest_path))
    if kind == "throttle":
        t = msg.throttle
        return ThrottleOrder(t.job_id, t.attempt, t.bwlimit, t.paused, t.reason)
    if kind == "cancel":
        c = msg.cancel
        return CancelOrder(c.job_id, c.attempt, c.reason, c.discard_partial)
    if kind == "watch_source":
        return source_order_from_pb(msg.watch_source)
    if kind == "watch_dest":
        return dest_order_from_pb(msg.watch_dest)
    if kind == "watch_stop":
        return WatchStopOrder(msg.watch_stop.rule_id, msg.watch_stop.reason)
    if kind == "watch_ticket":
        return ticket_order_from_pb(msg.watch_ticket)
    if kind == "watch_hold":
        h = msg.watch_hold
        return WatchHoldOrder(h.rule_id, h.epoch, h.held, h.reason)
    return None
