"""Agents the controller knows: their sessions (open streams), liveness and latest health.

Liveness is a pure function of (stream open, last heartbeat, now, offline_after).
"""

from __future__ import annotations

import array
import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any

from zcrepl.core.orders import Order
from zcrepl.core.types import AgentInfo, AgentStatus, HostHealth

_session_ids = itertools.count(1)
HISTORY = 900  # samples per agent: 15 minutes at one heartbeat a second


class HealthHistory:
    """A ring of the scalar figures of an agent's health samples, in one flat array of doubles.

    No object per sample: a thousand agents times 900 samples as dataclasses were ten million objects for
    the garbage collector to walk (multi-second full collections); as doubles they are ~110 MiB it never
    looks at. Per-core, per-disk, per-NIC and per-export detail lives only in the latest sample.

    The array starts at ``START`` samples and doubles as samples arrive, up to ``maxlen`` (137 KiB): an agent
    that registers and never heartbeats costs no history at all (the registry creates the ring on the
    first heartbeat), and one that has just started costs a few KiB. Values must fit a double exactly
    (integers below 2**53): ``zcrepl.controller.validate.health`` clamps them before they get here.
    """

    START = 16

    FIELDS = ("sampled_at", "cpu_percent", "cpu_count", "load1", "load5", "load15", "mem_total", "mem_available",
              "swap_in_bps", "swap_out_bps", "disk_read_bps", "disk_write_bps", "net_recv_bps", "net_sent_bps",
              "open_fds", "agent_cpu_percent", "agent_rss", "active_transfers", "transfer_bps")
    _INTS = frozenset({"cpu_count", "mem_total", "mem_available", "open_fds", "agent_rss", "active_transfers"})

    def __init__(self, maxlen: int = HISTORY) -> None:
        self.maxlen = maxlen
        self._cap = min(self.START, maxlen)
        self._buf = array.array("d", bytes(8 * self._cap * len(self.FIELDS)))
        self._next = 0
        self._len = 0

    def __len__(self) -> int:
        return self._len

    @property
    def capacity(self) -> int:
        """Samples the array has room for now (grows to ``maxlen``)."""
        return self._cap

    def append(self, h: HostHealth) -> None:
        width = len(self.FIELDS)
        if self._len == self._cap < self.maxlen:
            # Not wrapped yet (the ring only wraps at maxlen): the samples are in order, so growing is an extend.
            grow = min(self._cap * 2, self.maxlen) - self._cap
            self._buf.extend(array.array("d", bytes(8 * grow * width)))
            self._cap += grow
            self._next = self._len
        base = self._next * width
        for i, name in enumerate(self.FIELDS):
            self._buf[base + i] = float(getattr(h, name))
        self._next = (self._next + 1) % self._cap
        self._len = min(self._len + 1, self._cap)

    def series(self, name: str, n: int) -> list[float]:
        """Up to ``n`` most recent values of one figure, oldest first: a sparkline without building samples."""
        width, col = len(self.FIELDS), self.FIELDS.index(name)
        return [self._buf[((self._next - k) % self._cap) * width + col] for k in range(min(n, self._len), 0, -1)]

    def last(self, n: int) -> list[HostHealth]:
        """Up to ``n`` most recent samples, oldest first (scalar figures only)."""
        width = len(self.FIELDS)
        out = []
        for k in range(min(n, self._len), 0, -1):
            base = ((self._next - k) % self._cap) * width
            values: dict[str, Any] = {name: (int(v) if name in self._INTS else v)
                      for name, v in zip(self.FIELDS, self._buf[base : base + width], strict=True)}
            out.append(HostHealth(**values))
        return out


def is_online(stream_open: bool, last_seen: float, now: float, offline_after: float) -> bool:
    return stream_open and now - last_seen <= offline_after


@dataclass(eq=False)
class Session:
    """One open Connect stream. ``outbox`` carries the orders to send down it; None closes the stream."""

    info: AgentInfo
    connected_at: float
    last_seen: float
    id: int = field(default_factory=lambda: next(_session_ids))
    outbox: asyncio.Queue[Order | None] = field(default_factory=asyncio.Queue)
    open: bool = True
    serial: int = 0  # of the agent's certificate (0 on an insecure controller): revocation closes the session
    peer_host: str = ""  # the IP its stream comes from: its data connections may come from there too

    def close(self) -> None:
        if self.open:
            self.open = False
            self.outbox.put_nowait(None)


@dataclass
class AgentRecord:
    info: AgentInfo
    last_seen: float
    session: Session | None = None
    health: HostHealth | None = None
    history: HealthHistory | None = None  # created by the first heartbeat


class Registry:
    def __init__(self, offline_after: float) -> None:
        self.offline_after = offline_after
        self.agents: dict[str, AgentRecord] = {}

    def known(self, name: str) -> bool:
        return name in self.agents

    def load(self, name: str, info: AgentInfo, last_seen: float) -> None:
        self.agents.setdefault(name, AgentRecord(info, last_seen))

    def attach(self, session: Session) -> Session | None:
        """Make ``session`` current for its agent; returns the session it replaced, if any."""
        rec = self.agents.get(session.info.name)
        if rec is None:
            rec = self.agents[session.info.name] = AgentRecord(session.info, session.last_seen)
        old = rec.session
        rec.info, rec.session, rec.last_seen = session.info, session, session.last_seen
        return old if old is not session else None

    def detach(self, session: Session) -> bool:
        """True when ``session`` was the current one (the agent is now offline)."""
        rec = self.agents.get(session.info.name)
        if rec is None or rec.session is not session:
            return False
        rec.session = None
        return True

    def heartbeat(self, session: Session, health: HostHealth, now: float) -> None:
        session.last_seen = now
        rec = self.agents.get(session.info.name)
        if rec is not None and rec.session is session:
            rec.last_seen = now
            rec.health = health
            if rec.history is None:
                rec.history = HealthHistory()
            rec.history.append(health)

    def forget(self, name: str) -> None:
        """Drop an agent's record (an operator's RemoveAgent; the caller checked it is offline)."""
        self.agents.pop(name, None)

    def session(self, name: str) -> Session | None:
        rec = self.agents.get(name)
        return rec.session if rec and rec.session and rec.session.open else None

    def online(self, name: str, now: float) -> bool:
        rec = self.agents.get(name)
        return rec is not None and rec.session is not None and is_online(
            rec.session.open, rec.last_seen, now, self.offline_after)

    def silent(self, now: float) -> list[Session]:
        """Open sessions whose heartbeats stopped: a hung agent whose TCP connection looks alive."""
        return [r.session for r in self.agents.values()
                if r.session is not None and r.session.open and now - r.last_seen > self.offline_after]

    def status(self, name: str, now: float, running_jobs: int = 0, history: int = 0) -> AgentStatus:
        rec = self.agents[name]
        return AgentStatus(
            info=rec.info, online=self.online(name, now), last_seen=rec.last_seen,
            connected_at=rec.session.connected_at if rec.session else 0.0, health=rec.health,
            running_jobs=running_jobs,
            history=tuple(rec.history.last(history)) if history and rec.history is not None else (),
        )
