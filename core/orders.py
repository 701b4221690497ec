"""Every order the controller sends an agent down its stream, as one type.

The controller's sessions queue these (``Session.outbox``) and the agent's link dispatches them; the wire
form of each is in proto/orders.py, both ways, so the two ends cannot drift apart one kind at a time.
"""

from __future__ import annotations

from typing import TypeAlias

from zcrepl.core.synctypes import SyncDestOrder, SyncHoldOrder, SyncSourceOrder, SyncStopOrder, SyncTicketOrder
from zcrepl.core.types import CancelOrder, ReceiveOrder, SendOrder, ThrottleOrder

JobOrder: TypeAlias = ReceiveOrder | SendOrder | ThrottleOrder | CancelOrder
SyncOrder: TypeAlias = SyncSourceOrder | SyncDestOrder | SyncStopOrder | SyncTicketOrder | SyncHoldOrder
Order: TypeAlias = JobOrder | SyncOrder
