"""Orders cross the controller's stream and come back equal, every kind, and nothing else passes for one."""

from __future__ import annotations

import pytest

from zcrepl.core.orders import Order
from zcrepl.core.types import CancelOrder, JobOptions, ReceiveOrder, SendOrder, ThrottleOrder
from zcrepl.core.watchtypes import (
    WatchDest,
    WatchDestOrder,
    WatchHoldOrder,
    WatchPhase,
    WatchRule,
    WatchSourceOrder,
    WatchStopOrder,
    WatchTicketOrder,
)
from zcrepl.proto import controller_pb2 as cpb
from zcrepl.proto.orders import order_from_pb, order_to_pb

OPTS = JobOptions(delete=True, checksum=True, bwlimit=1 << 20, streams=3)
ORDERS: list[Order] = [
    ReceiveOrder(7, 2, b"t" * 32, b"/srv/b/\xffdst", OPTS, "hostA", ("10.0.0.2", "hostA.example")),
    SendOrder(7, 2, b"t" * 32, b"/srv/a/src", OPTS, "hostB", "10.0.0.3:7421", b"/srv/b/\xffdst"),
    ThrottleOrder(7, 2, bwlimit=5 << 20, paused=True, reason="hostB's disk is busy"),
    CancelOrder(7, 2, reason="cancelled by the operator", discard_partial=True),
    WatchSourceOrder(3, 9, b"/srv/a/w", OPTS, 0.05, 0.2,
                    (WatchDest("hostB", "10.0.0.3:7421", b"t" * 32, b"/srv/b/w", encrypt=True),),
                    held=True, hold_reason="hostA is busy"),
    WatchDestOrder(3, 9, b"/srv/b/w", OPTS, b"t" * 32, "hostA", ("10.0.0.2",), ticket_ttl=3600.0),
    WatchTicketOrder(3, 9, "hostB", b"u" * 32),
    WatchStopOrder(3, "rule removed"),
    WatchHoldOrder(3, 9, True, "hostB is busy"),
]


@pytest.mark.parametrize("order", ORDERS, ids=lambda o: type(o).__name__)
def test_every_order_survives_the_round_trip(order: Order) -> None:
    msg = cpb.ControllerMessage.FromString(order_to_pb(order).SerializeToString())
    assert order_from_pb(msg) == order


def test_every_kind_of_message_but_the_welcome_is_an_order() -> None:
    kinds = {f.name for f in cpb.ControllerMessage.DESCRIPTOR.oneofs_by_name["kind"].fields}
    sent = {order_to_pb(o).WhichOneof("kind") for o in ORDERS}
    assert kinds - sent == {"welcome"}
    assert order_from_pb(cpb.ControllerMessage(welcome=cpb.Welcome(heartbeat_interval=1.0))) is None


def test_anything_else_is_refused() -> None:
    with pytest.raises(TypeError, match="not an order"):
        order_to_pb("cancel job 7")  # type: ignore[arg-type]


@pytest.mark.parametrize("phase", list(WatchPhase), ids=lambda p: p.value)
def test_a_watch_rules_phase_crosses_the_wire_as_a_field(phase: WatchPhase) -> None:
    from zcrepl.core.types import Endpoint
    from zcrepl.proto.watchconvert import rule_from_pb, rule_to_pb

    rule = WatchRule(4, Endpoint("hostA", b"/srv/a/w"), (Endpoint("hostB", b"/srv/b/w"),), OPTS, phase=phase,
                    status=f"{phase.value}: as the operator reads it")
    back = rule_from_pb(type(rule_to_pb(rule)).FromString(rule_to_pb(rule).SerializeToString()))
    assert (back.phase, back.status) == (phase, rule.status)
