"""``zc-ctl snapshots HOST:/snaps``: the snapshots a directory of zc-ctl snapshot holds, and any being written.

What is there is read from the destination host itself, through its agent's API (``ListSnapshots``: confined to
the agent's exports, the read role), not inferred from the controller's job records: those cannot know what
retention pruned, what an operator removed or restored by hand, or what an interrupted run left. The records only
name the job that made each snapshot (its options carry the snapshot's name), when the controller still has it
among its latest ``JOBS_SEARCHED`` jobs.
"""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import TYPE_CHECKING, Any

import grpc

from zcrepl.cli.client import ControllerClient
from zcrepl.cli.ctl_out import EXIT_OK, Out
from zcrepl.cli.render import ago
from zcrepl.cli.render_plain import plain_table
from zcrepl.core.errors import Unavailable, UserError
from zcrepl.core.paths import parse_endpoint
from zcrepl.core.snapshots import SnapshotEntry, parse_name
from zcrepl.core.types import AgentStatus, Endpoint, Job, JobState
from zcrepl.core.wellknown import AGENT_DNS
from zcrepl.proto import agent_pb2, agent_pb2_grpc
from zcrepl.proto.channels import channel
from zcrepl.proto.errors import from_rpc_error

if TYPE_CHECKING:
    from rich.table import Table

JOBS_SEARCHED = 1000  # the latest jobs whose options may name a listed snapshot
COLUMNS = ("NAME", "UTC TIME", "JOB", "STATE")
WRITING = "being written"
LEFT_OVER = "left by an interrupted run (the next run removes it)"


def run(args: argparse.Namespace, client: ControllerClient, out: Out, err: Out) -> int:
    snaps = parse_endpoint(args.dir)
    agent = _agent(client, snaps.host)
    entries = _listing(agent, snaps, client)
    made = _makers(client.jobs((), JOBS_SEARCHED), snaps, {e.name for e in entries})
    if args.json:
        out.json([snapshot_doc(e, made.get(e.name)) for e in entries])
        return EXIT_OK
    title = _title(snaps, entries)
    rows = [_row(e, made.get(e.name)) for e in entries]
    text = None if out.terminal else plain_table(title, COLUMNS, rows, out.width)
    if text is None:
        out.show(_table(title, rows))
    else:
        out.write(text)
    return EXIT_OK


def _agent(client: ControllerClient, host: str) -> AgentStatus:
    for a in client.agents():
        if a.info.name == host:
            if not a.online:
                raise Unavailable(f"{host} is offline (last seen {ago(a.last_seen)}): its snapshots are read from "
                                  "its agent; try again once it is back (zc-ctl agents)")
            return a
    raise UserError(f"unknown host '{host}': no agent of that name is registered (zc-ctl agents lists them)")


def _listing(agent: AgentStatus, snaps: Endpoint, client: ControllerClient) -> list[SnapshotEntry]:
    """The agent's answer; its refusal (outside the exports, not a snapshots directory) as its own sentence."""
    address = agent.info.grpc_address
    ch = channel(address, client.trust, server_name=AGENT_DNS)
    try:
        stub = agent_pb2_grpc.AgentStub(ch)
        resp = stub.ListSnapshots(agent_pb2.ListSnapshotsRequest(path=snaps.path), timeout=client.timeout)
    except grpc.RpcError as e:
        if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise Unavailable(f"cannot reach {snaps.host}'s agent at {address} ({e.details()}); zc-ctl snapshots "
                              "reads from the agent's API port: it must be reachable from here") from None
        raise from_rpc_error(e, address) from None
    finally:
        ch.close()
    return [SnapshotEntry(s.name, s.in_progress, s.writing) for s in resp.snapshots]


def _makers(jobs: list[Job], snaps: Endpoint, names: set[str]) -> dict[str, Job]:
    """The job that made each snapshot name (a finished one first: an in-progress name's job is still going)."""
    out: dict[str, Job] = {}
    for j in jobs:
        name = j.options.snapshot_name
        if name in names and j.destination == snaps and (
                name not in out or (j.state is JobState.DONE and out[name].state is not JobState.DONE)):
            out[name] = j
    return out


def _time(name: str) -> datetime:
    t = parse_name(name)
    assert t is not None  # the agent lists snapshot names only
    return t


def _state(e: SnapshotEntry) -> str:
    return "complete" if not e.in_progress else WRITING if e.writing else LEFT_OVER


def snapshot_doc(e: SnapshotEntry, job: Job | None) -> dict[str, Any]:
    t = _time(e.name)
    return {"name": e.name, "time": t.strftime("%Y-%m-%dT%H:%M:%SZ"), "timestamp": t.timestamp(),
            "complete": not e.in_progress, "in_progress": e.in_progress, "writing": e.writing,
            "job_id": job.id if job else None, "job_state": job.state.value if job else None}


def _row(e: SnapshotEntry, job: Job | None) -> list[str]:
    name = f".{e.name}.in-progress" if e.in_progress else e.name
    return [name, _time(e.name).strftime("%Y-%m-%d %H:%M:%S"), f"{job.id} ({job.state.value})" if job else "-",
            _state(e)]


def _title(snaps: Endpoint, entries: list[SnapshotEntry]) -> str:
    complete = sum(not e.in_progress for e in entries)
    writing = sum(e.writing for e in entries)
    return f"snapshots in {snaps}: {complete} complete" + (f", {writing} being written" if writing else "")


def _table(title: str, rows: list[list[str]]) -> Table:
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=escape(title), title_justify="left")
    for col in COLUMNS:
        t.add_column(col, overflow="fold")
    for row in rows:
        t.add_row(*(escape(c) for c in row))
    return t
