"""From submit to the orders going out, the controller waits for nothing: a submit wakes the scheduler, and the
receiver's READY sends the SendOrder at once (issue 11, item 1: no fixed waits on the schedule-to-start path)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from zcrepl.controller.engine import Engine
from zcrepl.controller.store import open_store
from zcrepl.core.config import ControllerConfig
from zcrepl.core.types import (
    AgentInfo,
    DiskUsage,
    Endpoint,
    HostHealth,
    JobOptions,
    Phase,
    ReceiveOrder,
    Role,
    SendOrder,
    TransferReport,
)


def test_a_submit_is_scheduled_without_waiting_for_the_next_tick(tmp_path: Path, store_spec: str) -> None:
    async def scenario() -> None:
        # A scheduling pass every hour: only the wake-up that submit() gives can start the job in time.
        store = open_store(store_spec, str(tmp_path))
        # As the daemon does: the engine reads the state it resumes off the loop.
        engine = await asyncio.to_thread(Engine, ControllerConfig(state_dir=str(tmp_path), schedule_interval=3600.0),
                                         store)
        health = HostHealth(cpu_count=8, exports=(DiskUsage(b"/srv", 1 << 40, 0, 1 << 40, 0.0),))
        sessions = {}
        for i, name in enumerate(("hostA", "hostB")):
            s = engine.connect(AgentInfo(name, data_address=f"127.0.0.1:{9000 + i}", exports=(b"/srv",)), [])
            engine.heartbeat(s, health)
            sessions[name] = s
        loop = asyncio.create_task(engine.run_forever())
        try:
            await asyncio.sleep(0)  # the loop is now waiting out its hour
            job = engine.submit(Endpoint("hostA", b"/srv/a"), Endpoint("hostB", b"/srv/b"), JobOptions())
            recv = await asyncio.wait_for(sessions["hostB"].outbox.get(), 30)  # a hang guard, not a timing
            assert isinstance(recv, ReceiveOrder) and recv.job_id == job.id
            engine.report(sessions["hostB"], TransferReport(job.id, recv.attempt, Role.RECEIVER, Phase.READY))
            send = sessions["hostA"].outbox.get_nowait()  # sent from within the report, not by a later tick
            assert isinstance(send, SendOrder) and send.job_id == job.id
        finally:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
            store.close()

    asyncio.run(scenario())
