"""The agent's long-lived stream to the controller: register, heartbeats and reports up, orders down.

The agent dials, so agents behind NAT still get orders. When the stream breaks the agent cancels its
transfers (the controller fails those attempts and reschedules them) and redials with backoff.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator

import grpc

from zcrepl.agent.syncs import Syncs
from zcrepl.agent.transfers import Transfers
from zcrepl.core.backoff import backoff_delay
from zcrepl.core.logs import kv
from zcrepl.core.synctypes import SyncHoldOrder, SyncStopOrder
from zcrepl.core.trust import Trust
from zcrepl.core.types import (
    AgentInfo,
    CancelOrder,
    HostHealth,
    ReceiveOrder,
    SendOrder,
    ThrottleOrder,
    TransferReport,
)
from zcrepl.proto import controller_pb2 as cpb
from zcrepl.proto import controller_pb2_grpc
from zcrepl.proto.channels import channel
from zcrepl.proto.convert import agent_info_to_pb, health_to_pb, options_from_pb, report_to_pb
from zcrepl.proto.syncconvert import dest_order_from_pb, source_order_from_pb, status_to_pb, ticket_order_from_pb

log = logging.getLogger(__name__)

_CLOSE = object()


class ControllerLink:
    def __init__(
        self,
        target: str,
        info: Callable[[], AgentInfo],
        health: Callable[[], HostHealth],
        transfers: Transfers,
        *,
        heartbeat_interval: float,
        reconnect_max: float,
        on_interval: Callable[[float], None] = lambda _s: None,
        on_beat: Callable[[], None] = lambda: None,
        syncs: Syncs | None = None,
        trust: Trust | None = None,
    ) -> None:
        self.target = target
        self._info = info
        self._health = health
        self.transfers = transfers
        self.interval = heartbeat_interval
        self.reconnect_max = reconnect_max
        self.on_interval = on_interval
        self.on_beat = on_beat
        self.syncs = syncs
        self.trust = trust
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._outbox: queue.Queue[object] | None = None
        self._call: grpc.Future | None = None
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
        self._send(cpb.AgentMessage(report=report_to_pb(r)))  # type: ignore[arg-type]

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
        while not self._stop.is_set():
            box: queue.Queue[object] = queue.Queue()
            refs = [cpb.TransferRef(job_id=j, attempt=a) for j, a in self.transfers.refs()]
            box.put(cpb.AgentMessage(register=cpb.Register(info=agent_info_to_pb(self._info()), active=refs)))
            if self.trust is not None:
                self.trust.refresh()  # each (re)connection presents the newest certificate
            ch = channel(self.target, self.trust)
            try:
                stub = controller_pb2_grpc.ControllerStub(ch)
                call = stub.Connect(_drain(box))
                with self._lock:
                    self._call, self._outbox = call, box
                for msg in call:
                    if self._handle(msg):
                        failures = 0
            except grpc.RpcError as err:
                if not self._stop.is_set():
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
            if was_connected:
                self.transfers.cancel_all("lost the controller stream")
            failures += 1
            delay = backoff_delay(failures, 0.5, self.reconnect_max)
            log.info("reconnecting to controller", extra=kv(controller=self.target, in_seconds=round(delay, 2)))
            self._stop.wait(delay)

    def _handle(self, msg: cpb.ControllerMessage) -> bool:
        kind = msg.WhichOneof("kind")
        if kind == "welcome":
            if msg.welcome.heartbeat_interval > 0:
                self.interval = msg.welcome.heartbeat_interval
                self.on_interval(self.interval)
            self.connected.set()
            log.info("registered with controller", extra=kv(controller=self.target, heartbeat=self.interval))
            self._send(self._heartbeat())
            return True
        if kind == "receive":
            o = msg.receive
            self.transfers.receive(ReceiveOrder(o.job_id, o.attempt, bytes(o.ticket), bytes(o.path),
                                                options_from_pb(o.options), o.source_host,
                                                tuple(o.source_addresses)))
        elif kind == "send":
            o2 = msg.send
            self.transfers.send(SendOrder(o2.job_id, o2.attempt, bytes(o2.ticket), bytes(o2.path),
                                          options_from_pb(o2.options), o2.dest_host, o2.dest_data_address,
                                          bytes(o2.dest_path)))
        elif kind == "throttle":
            t = msg.throttle
            self.transfers.throttle(ThrottleOrder(t.job_id, t.attempt, t.bwlimit, t.paused, t.reason))
        elif kind in ("sync_source", "sync_dest", "sync_stop", "sync_hold", "sync_ticket") and self.syncs is not None:
            self._sync_order(msg)
        elif kind == "cancel":
            c = msg.cancel
            self.transfers.cancel(CancelOrder(c.job_id, c.attempt, c.reason, c.discard_partial))
        return False

    def _sync_order(self, msg: cpb.ControllerMessage) -> None:
        assert self.syncs is not None
        kind = msg.WhichOneof("kind")
        if kind == "sync_source":
            self.syncs.source(source_order_from_pb(msg.sync_source))
        elif kind == "sync_dest":
            self.syncs.dest(dest_order_from_pb(msg.sync_dest))
        elif kind == "sync_stop":
            self.syncs.stop(SyncStopOrder(msg.sync_stop.rule_id, msg.sync_stop.reason))
        elif kind == "sync_ticket":
            self.syncs.rotate(ticket_order_from_pb(msg.sync_ticket))
        else:
            h = msg.sync_hold
            self.syncs.hold(SyncHoldOrder(h.rule_id, h.epoch, h.held, h.reason))

    def _heartbeats(self) -> None:
        while not self._stop.wait(self.interval):
            self.on_beat()
            if self.connected.is_set():
                self._send(self._heartbeat())

    def _heartbeat(self) -> cpb.AgentMessage:
        syncs = [status_to_pb(s) for s in self.syncs.statuses()] if self.syncs is not None else []
        return cpb.AgentMessage(heartbeat=cpb.Heartbeat(health=health_to_pb(self._health()), syncs=syncs))


def _drain(box: queue.Queue[object]) -> Iterator[cpb.AgentMessage]:
    while True:
        item = box.get()
        if item is _CLOSE:
            return
        yield item  # type: ignore[misc]
