"""The engine harness shared by the engine tests: a real Engine and Store (SQLite or PostgreSQL), agents as
in-memory sessions the test plays, an injected clock."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from zcrepl.controller.engine import Engine
from zcrepl.controller.registry import Session
from zcrepl.controller.store import open_store
from zcrepl.core.config import ControllerConfig
from zcrepl.core.types import (
    AgentInfo,
    DiskUsage,
    Endpoint,
    HostHealth,
    Job,
    JobOptions,
    Phase,
    ReceiveOrder,
    Role,
    SendOrder,
    TransferReport,
    TransferStats,
)

GiB = 1 << 30


def idle(at: float, cores: int = 16, cpu: float = 0.0, load: float = 0.0) -> HostHealth:
    return HostHealth(sampled_at=at, cpu_percent=cpu, cpu_count=cores, load1=load,
                      exports=(DiskUsage(b"/srv", 1000 * GiB, 100 * GiB, 900 * GiB, 10.0),))


class Harness:
    """An Engine with agents played by the test; ``now`` is the engine's clock."""

    def __init__(self, state_dir: Path, store_spec: str = "", **config: Any) -> None:
        self.now = 1000.0
        self.store = open_store(store_spec, str(state_dir))
        self.engine = Engine(ControllerConfig(state_dir=str(state_dir), **config), self.store, clock=lambda: self.now)
        self.sessions: dict[str, Session] = {}

    def agent(self, name: str, cores: int = 16, cpu: float = 0.0) -> Session:
        s = self.engine.connect(AgentInfo(name, data_address=f"127.0.0.1:{len(self.sessions) + 9000}",
                                          exports=(b"/srv",)), [])
        self.sessions[name] = s
        self.beat(name, cores, cpu)
        return s

    def beat(self, name: str, cores: int = 16, cpu: float = 0.0, load: float = 0.0) -> None:
        self.engine.heartbeat(self.sessions[name], idle(self.now, cores, cpu, load))

    def finish(self, job: Job) -> None:
        run = self.engine.runs[job.id]
        self.report(run.source.host, job, Role.SENDER, Phase.DONE, run.attempt, files_done=1)
        self.report(job.destination.host, job, Role.RECEIVER, Phase.DONE, run.attempt, files_done=1)

    def orders(self, name: str) -> list[object]:
        out = []
        q = self.sessions[name].outbox
        while not q.empty():
            out.append(q.get_nowait())
        return out

    def submit(self, src: str, dst: str, **options: Any) -> Job:
        return self.engine.submit(ep(src), ep(dst), JobOptions(**options))

    def report(self, name: str, job: Job, role: Role, phase: Phase, attempt: int = 1, **stats: Any) -> None:
        self.engine.report(self.sessions[name], TransferReport(job.id, attempt, role, phase, TransferStats(**stats)))

    def start(self, job: Job) -> SendOrder:
        """Tick until the job's ReceiveOrder goes out, answer READY, and return the SendOrder."""
        self.engine.tick()
        dst = job.destination.host
        (recv,) = [o for o in self.orders(dst) if isinstance(o, ReceiveOrder) and o.job_id == job.id]
        self.report(dst, job, Role.RECEIVER, Phase.READY, recv.attempt)
        run = self.engine.runs[job.id]
        (send,) = [o for o in self.orders(run.source.host) if isinstance(o, SendOrder) and o.job_id == job.id]
        return send

    def explain(self, job: Job) -> list[tuple[str, str]]:
        return [(kind, reason) for _, kind, reason in asyncio.run(self.engine.explain(job.id))]

    def close(self) -> None:
        self.store.close()


def ep(spec: str) -> Endpoint:
    host, _, path = spec.partition(":")
    return Endpoint(host, path.encode())
