"""Request ids (controller/requests.py): stored with what a write made, in the same transaction, on both
backends; a database of the previous schema version gains the table and keeps its jobs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from zcrepl.controller.requests import JOB, WATCH_RULE, Requests, checked
from zcrepl.controller.store import open_db, open_store
from zcrepl.controller.store_migrations import STEPS, latest
from zcrepl.core.errors import InvalidArgument
from zcrepl.core.types import Endpoint, JobOptions, JobState

SRC = Endpoint("hostA", b"/data/src")
DST = Endpoint("hostB", b"/data/dst")
MINE = {"sqlite": 9, "postgres": 4}  # the step that added the requests table


def _previous(spec: str, state: Path) -> None:
    """A database exactly as the controller before this step left it, with one job."""
    db = open_db(spec, str(state))
    try:
        steps = STEPS[db.dialect]
        older = sorted(n for n in steps if n < MINE[db.dialect])
        with db.transaction():
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            for n in older:
                for statement in steps[n].split(";"):
                    if statement.strip():
                        db.execute(statement)
            db.execute("INSERT INTO meta (key, value) VALUES ('schema', ?)", (str(older[-1]),))
            db.execute("INSERT INTO jobs (id, state, src_host, src_path, dst_host, dst_path, options, created_at,"
                       " updated_at, max_attempts) VALUES (1, 'done', 'hostA', ?, 'hostB', ?, '{}', 1, 2, 3)",
                       (SRC.path, DST.path))
    finally:
        db.close()


def test_the_previous_schema_gains_the_requests_table_and_keeps_its_jobs(store_spec: str, tmp_path: Path) -> None:
    _previous(store_spec, tmp_path)
    s = open_store(store_spec, str(tmp_path))
    try:
        assert s.run(lambda: s.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0]) == str(
            latest(s.db.dialect))
        old = s.get_job(1)
        assert old is not None and old.state is JobState.DONE
        req = Requests(s)
        with s.together("submit_job"):
            job = s.create_job(SRC, DST, JobOptions(), 3, 5.0)
            req.remember("r-1", JOB, [job.id], 5.0)
        assert job.id == 2
        assert asyncio.run(req.made("r-1", JOB)) == [2]
        assert asyncio.run(req.made("r-1", WATCH_RULE)) == []  # a watch rule's id is another kind
        assert asyncio.run(req.made("", JOB)) == []
    finally:
        s.close()


def test_a_job_and_its_request_id_commit_together_or_not_at_all(store_spec: str, tmp_path: Path) -> None:
    s = open_store(store_spec, str(tmp_path))
    try:
        req = Requests(s)
        timed: list[str] = []
        s.timer = lambda name, _seconds: timed.append(name)
        with s.together("submit_fanout"):
            jobs = [s.create_job(SRC, Endpoint("hostB", f"/d{i}".encode()), JobOptions(), 3, 1.0) for i in range(2)]
            req.remember("fan", JOB, [j.id for j in jobs], 1.0)
        assert asyncio.run(req.made("fan", JOB)) == [1, 2]
        # The metrics time each write of the block under its own name (zcrepl_controller_store_call_seconds).
        assert timed[:3] == ["create_job", "create_job", "remember_request"]
        # A second job under the same request id and ref breaks the primary key: the job made in the same
        # block must not be left behind without its id.
        with s.together("submit_job"):
            lone = s.create_job(SRC, DST, JobOptions(), 3, 2.0)
            req.remember("fan", JOB, [1], 2.0)
        s.run(lambda: None)
        assert s.get_job(lone.id) is None
        assert sorted(j.id for j in s.list_jobs()) == [1, 2]
    finally:
        s.close()


def test_a_repeat_waits_for_the_first_call_in_progress(tmp_path: Path) -> None:
    s = open_store("", str(tmp_path))

    async def both() -> tuple[list[int], list[int]]:
        req = Requests(s)
        order: list[str] = []

        async def first() -> list[int]:
            assert await req.made("same", JOB) == []
            with req.making("same", JOB):
                with s.together("submit_job"):
                    job = s.create_job(SRC, DST, JobOptions(), 3, 1.0)
                    req.remember("same", JOB, [job.id], 1.0)
                await asyncio.sleep(0)  # the repeat arrives while this one waits for its commit
                order.append("first committing")
                await s.flush()
            return [job.id]

        async def repeat() -> list[int]:
            await asyncio.sleep(0)
            made = await req.made("same", JOB)
            order.append("repeat answered")
            return made

        a, b = await asyncio.gather(first(), repeat())
        assert order == ["first committing", "repeat answered"]
        return a, b

    try:
        a, b = asyncio.run(both())
        assert a == b == [1]
        assert [j.id for j in s.list_jobs()] == [1]
    finally:
        s.close()


@pytest.mark.parametrize("bad", ["x" * 65, "line\nbreak"])
def test_a_malformed_request_id_is_refused_in_one_sentence(bad: str) -> None:
    with pytest.raises(InvalidArgument, match="request_id must be at most 64 printable characters"):
        checked(bad)
    assert checked("5f0c6f7e-2d1b-4c59-9a53-5f8d0f1e2b3c")
