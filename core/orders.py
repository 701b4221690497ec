"""Every order the controller sends an agent down its stream, as one type.

The controller's sessions queue these (``Session.outbox``) and the agent's link dispatches them; the wire
form of each is in proto/orders.py, both ways, so the two ends cannot drift apart one kind at a time.
"""

from __future__ import annotations

from typing import TypeAlias

from zcrepl.core.types import CancelOrder, ReceiveOrder, SendOrder, ThrottleOrder
from zcrepl.core.watchtypes import WatchDestOrder, WatchHoldOrder, WatchSourceOrder, WatchStopOrder, WatchTicketOrder

JobOrder: TypeAlias = ReceiveOrder | SendOrder | ThrottleOrder | CancelOrder
WatchOrder: TypeAlias = WatchSourceOrder | WatchDestOrder | WatchStopOrder | WatchTicketOrder | WatchHoldOrder
Order: TypeAlias = JobOrder | WatchOrder
