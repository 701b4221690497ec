"""The agent's long-lived stream to the controller: register, heartbeats and reports up, orders down.

The agent dials, so agents behind NAT still get orders. When the stream breaks the agent redials with
backoff and its transfers carry on: the controller holds their attempts for ``attempt_grace`` seconds (its
Welcome says how long; see controller/fence.py). Back in time, the agent lists them in its Register and
sends again the final reports of the last ``attempt_grace`` seconds (the controller ignores those it already
has). Still without the controller ``attempt_grace - LOSS_DETECTION`` seconds after noticing the loss, it
stops them itself, before the controller may start another attempt.

Several controllers (``--controller a:7420,b:7420,c:7420``, one PostgreSQL store, one leader): the agent dials
them in turn and keeps its stream to the leader only. A follower ends the call with UNAVAILABLE and the leader's
address in the ``zc-leader`` trailer, which the agent dials next; an address that fails sends it to the next
one in the list after a short pause, with backoff only once it has tried them all. Every message down the
stream carries the leader's epoch: the agent remembers the newest it has seen (per store) and refuses, and
logs, what comes with an older one (a deposed leader that has not noticed yet), then looks for the leader.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator

import grpc

from zcrepl.agent.attempts import Attempts
from zcrepl.agent.watchrules import WatchRules
from zcrepl.core.backoff import backoff_delay
from zcrepl.core.config import controller_list
from zcrepl.core.logs import attempt_fields, kv, log_context
from zcrepl.core.orders import Order
from zcrepl.core.trust import Trust
from zcrepl.core.types import (
    AgentInfo,
    CancelOrder,
    HostHealth,
    Phase,
    ReceiveOrder,
    SendOrder,
    ThrottleOrder,
    TransferReport,
)
from zcrepl.core.watchtypes import WatchDestOrder, WatchHoldOrder, WatchSourceOrder, WatchStopOrder, WatchTicketOrder
from zcrepl.proto import controller_pb2 as cpb
from zcrepl.proto import controller_pb2_grpc
from zcrepl.proto.channels import KEEPALIVE_CLIENT, channel
from zcrepl.proto.convert import agent_info_to_pb, health_to_pb, report_to_pb
from zcrepl.proto.orders import order_from_pb
from zcrepl.proto.watchconvert import status_to_pb

log = logging.getLogger(__name__)

_CLOSE = object()
LEADER_KEY = "zc-leader"  # controller/follower.py: the trailer naming the leader
REDIAL = 0.2  # seconds before dialling the leader a follower named, or the next controller of the list


class _Stale(Exception):
    """The controller's messages carry an older leader epoch than one already seen: it was deposed."""


def _option(name: str) -> float:
    return float(dict(KEEPALIVE_CLIENT)[name]) / 1000


# The longest the agent may take to notice a dead stream after the controller last heard from it: a keepalive
# ping every keepalive_time, answered within keepalive_timeout.
LOSS_DETECTION = _option("grpc.keepalive_time_ms") + _option("grpc.keepalive_timeout_ms")
FINAL = (Phase.DONE, Phase.FAILED)


class ControllerLink:
    def __init__(
        self,
        target: str,
        info: Callable[[], AgentInfo],
        health: Callable[[], HostHealth],
        transfers: Attempts,
        *,
        heartbeat_interval: float,
        reconnect_max: float,
        on_interval: Callable[[float], None] = lambda _s: None,
        on_beat: Callable[[], None] = lambda: None,
        watch_rules: WatchRules | None = None,
        trust: Trust | None = None,
    ) -> None:
        self.targets = controller_list(target)
        self.target = self.targets[0]
        self._epoch = 0  # the newest leader epoch seen, of store ``_store_id``
        self._store_id = ""
        self._info = info
        self._health = health
        self.transfers = transfers
        self.interval = heartbeat_interval
        self.reconnect_max = reconnect_max
        self.on_interval = on_interval
        self.on_beat = on_beat
        self.watch_rules = watch_rules
        self.trust = trust
        self.connected = threading.Event()
        self.attempt_grace = 0.0  # from the controller's Welcome: 0 stops transfers as soon as it is lost
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._outbox: queue.Queue[object] | None = None
        self._call: grpc.Future | None = None
        self._lost_at = 0.0  # monotonic time the stream was lost with transfers running; 0 when connected
        # Final reports with when they were made: sent again after a reconnect (a report in flight when the
        # stream broke is lost with it, and the controller may be holding that attempt).
        self._finals: collections.deque[tuple[float, TransferReport]] = collections.deque(maxlen=4096)
        self._thread = threading.Thread(target=self._run, name="zc-link", daemon=True)
        self._beat = threading.Thread(target=self._heartbeats, name="zc-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._beat.start()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            call, box = self._call, self._outbox
        if box is not None:
            box.put(_CLOSE)
        if call is not None:
            call.cancel()
        self._thread.join(5)
        self._beat.join(5)

    def report(self, r: TransferReport) -> None:
        if r.phase in FINAL:
            with self._lock:
                self._finals.append((time.monotonic(), r))
        self._send(cpb.AgentMessage(report=report_to_pb(r)))  # type: ignore[arg-type]

    def _recent_finals(self) -> list[TransferReport]:
        """Final reports the controller may still be waiting for: made within its grace plus our detection."""
        horizon = time.monotonic() - self.attempt_grace - LOSS_DETECTION
        with self._lock:
            return [r for t, r in self._finals if t >= horizon] if self.attempt_grace > 0 else []

    # -- internals ----------------------------------------------------------------------------------
    def _send(self, msg: cpb.AgentMessage) -> bool:
        with self._lock:
            box = self._outbox
        if box is None:
            return False  # offline: the controller fails this attempt when it sees us gone
        box.put(msg)
        return True

    def _run(self) -> None:
        failures = 0
        tried = 0  # controllers of the list tried since the last good stream
        while not self._stop.is_set():
            box: queue.Queue[object] = queue.Queue()
            finals = self._recent_finals()
            held = sorted(set(self.transfers.refs()) | {(r.job_id, r.attempt) for r in finals})
            refs = [cpb.TransferRef(job_id=j, attempt=a) for j, a in held]
            box.put(cpb.AgentMessage(register=cpb.Register(info=agent_info_to_pb(self._info()), active=refs)))
            for r in finals:
                box.put(cpb.AgentMessage(report=report_to_pb(r)))  # type: ignore[arg-type]
            if self.trust is not None:
                self.trust.refresh()  # each (re)connection presents the newest certificate
            ch = channel(self.target, self.trust)
            leader = ""
            try:
                stub = controller_pb2_grpc.ControllerStub(ch)
                call = stub.Connect(_drain(box))
                with self._lock:
                    self._call, self._outbox = call, box
                for msg in call:
                    if self._handle(msg):
                        failures, tried = 0, 0
            except _Stale:
                call.cancel()
            except grpc.RpcError as err:
                leader = _leader(err)
                if not self._stop.is_set() and not leader:
                    log.warning("controller stream lost", extra=kv(
                        controller=self.target, code=err.code().name if hasattr(err, "code") else "?",
                        details=err.details() if hasattr(err, "details") else str(err)))
            finally:
                was_connected = self.connected.is_set()
                self.connected.clear()
                with self._lock:
                    self._call, self._outbox = None, None
                box.put(_CLOSE)
                ch.close()
            if self._stop.is_set():
                return
            if was_connected and self.transfers.count():
                self._lost_at = time.monotonic()
                self._fence()
            delay, tried, failures = self._next_target(leader, tried + 1, failures)
            log.info("reconnecting to controller", extra=kv(controller=self.target, in_seconds=round(delay, 2)))
            self._stop.wait(delay)

    def _next_target(self, leader: str, tried: int, failures: int) -> tuple[float, int, int]:
        """Point ``target`` at the controller to dial next: (delay before, tried, failures) updated."""
        if leader:  # a follower named the leader: dial it next
            self.target = leader
            return REDIAL, tried, failures
        at = self.targets.index(self.target) + 1 if self.target in self.targets else 0
        self.target = self.targets[at % len(self.targets)]
        if tried < len(self.targets):
            return REDIAL, tried, failures
        # Each has been tried: back off before the next round.
        return backoff_delay(failures + 1, 0.5, self.reconnect_max), 0, failures + 1

    def _fence(self) -> None:
        """Stop the transfers once the controller has been gone for longer than it holds their attempts."""
        if not self._lost_at or self.connected.is_set():
            return
        grace = max(0.0, self.attempt_grace - LOSS_DETECTION)
        if time.monotonic() - self._lost_at < grace:
            return
        self._lost_at = 0.0
        why = (f"no controller for {grace:.0f}s: the controller gives this attempt up after {self.attempt_grace:g}s"
               if grace else "lost the controller stream")
        log.warning("stopping transfers without the controller", extra=kv(controller=self.target, reason=why))
        self.transfers.cancel_all(why)

    def _fresh(self, msg: cpb.ControllerMessage) -> bool:
        """False for a message of an older leader epoch than the newest seen from the same store."""
        epoch, store_id = msg.leader_epoch, msg.store_id
        if not epoch:
            return True  # a controller without leadership epochs
        if store_id == self._store_id and epoch < self._epoch:
            log.warning("order refused: it comes from a deposed leader; looking for the current one", extra=kv(
                controller=self.target, kind=msg.WhichOneof("kind"), epoch=epoch, newest_epoch=self._epoch))
            return False
        self._store_id, self._epoch = store_id, epoch
        return True

    def _handle(self, msg: cpb.ControllerMessage) -> bool:
        if not self._fresh(msg):
            raise _Stale()
        kind = msg.WhichOneof("kind")
        if kind == "welcome":
            if msg.welcome.heartbeat_interval > 0:
                self.interval = msg.welcome.heartbeat_interval
                self.on_interval(self.interval)
            self.attempt_grace = max(0.0, msg.welcome.attempt_grace)
            self._lost_at = 0.0
            self.connected.set()
            log.info("registered with controller", extra=kv(controller=self.target, heartbeat=self.interval,
                                                            epoch=msg.leader_epoch))
            self._send(self._heartbeat())
            return True
        order = order_from_pb(msg)
        if order is not None:
            # Every line logged while an order is handled (and by the threads it starts) names its job or rule.
            with log_context(**_order_fields(order)):
                self._dispatch(order)
        return False

    def _dispatch(self, order: Order) -> None:
        match order:
            case ReceiveOrder():
                self.transfers.receive(order)
            case SendOrder():
                self.transfers.send(order)
            case ThrottleOrder():
                self.transfers.throttle(order)
            case CancelOrder():
                self.transfers.cancel(order)
            case _ if self.watch_rules is None:
                log.warning("watch-rule order ignored: this agent runs no watch rules",
                            extra=kv(order=type(order).__name__))
            case WatchSourceOrder():
                self.watch_rules.source(order)
            case WatchDestOrder():
                self.watch_rules.dest(order)
            case WatchStopOrder():
                self.watch_rules.stop(order)
            case WatchTicketOrder():
                self.watch_rules.rotate(order)
            case WatchHoldOrder():
                self.watch_rules.hold(order)

    def _heartbeats(self) -> None:
        while not self._stop.wait(self.interval):
            self.on_beat()
            if self.connected.is_set():
                self._send(self._heartbeat())
            else:
                self._fence()

    def _heartbeat(self) -> cpb.AgentMessage:
        watch_rules = [status_to_pb(s) for s in self.watch_rules.statuses()] if self.watch_rules is not None else []
        return cpb.AgentMessage(heartbeat=cpb.Heartbeat(health=health_to_pb(self._health()), watch_rules=watch_rules))


def _leader(err: grpc.RpcError) -> str:
    """The leader's address a follower put in its UNAVAILABLE, or ''."""
    if not hasattr(err, "code") or err.code() is not grpc.StatusCode.UNAVAILABLE:
        return ""
    for key, value in (err.trailing_metadata() if hasattr(err, "trailing_metadata") else None) or ():
        if key == LEADER_KEY and isinstance(value, str):
            return value
    return ""


def _drain(box: queue.Queue[object]) -> Iterator[cpb.AgentMessage]:
    while True:
        item = box.get()
        if item is _CLOSE:
            return
        yield item  # type: ignore[misc]


def _order_fields(order: Order) -> dict[str, int]:
    """The log fields of an order: its job and attempt, or its watch rule (and epoch)."""
    job_id, attempt = getattr(order, "job_id", None), getattr(order, "attempt", None)
    if job_id is not None and attempt is not None:
        return attempt_fields(job_id, attempt)
    fields = {"rule": order.rule_id} if hasattr(order, "rule_id") else {}
    if hasattr(order, "epoch"):
        fields["epoch"] = order.epoch
    return fields
