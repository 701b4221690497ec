"""Batched writes (Db.batched, store_pg.py: one executemany per statement, pipelined): on both backends, a batch
keeps each statement's order, reads see everything queued before them, and a write that fails is lost alone."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from zcrepl.controller.pki_store import PkiStore
from zcrepl.controller.store import Store, open_store
from zcrepl.core.types import Endpoint, JobOptions, JobState


@pytest.fixture
def store(store_spec: str, tmp_path: Path) -> Iterator[Store]:
    s = open_store(store_spec, str(tmp_path / "state"))
    yield s
    s.close()


def test_batched_writes_keep_their_order_around_other_statements(store: Store) -> None:
    a = store.create_job(Endpoint("hostA", b"/a"), Endpoint("hostB", b"/b"), JobOptions(), 3, 1.0)
    for i in range(5):  # one job saved again and again, explain records in between: the last save wins
        store.save_job(replace(a, state=JobState.RUNNING, updated_at=float(i)))
        store.add_decision(a.id, float(i), "wait", f"reason {i}")
    b = store.create_job(Endpoint("hostA", b"/c"), Endpoint("hostB", b"/d"), JobOptions(), 3, 2.0)  # not batched
    store.save_job(replace(b, state=JobState.DONE, updated_at=9.0))  # after its INSERT, though batched
    store.add_decision(b.id, 9.0, "done", "copied")
    assert store.get_job(a.id).updated_at == 4.0  # type: ignore[union-attr]
    assert store.get_job(b.id).state is JobState.DONE  # type: ignore[union-attr]
    assert [r for _, _, r in store.decisions(a.id)] == [f"reason {i}" for i in range(5)]
    assert store.decisions(b.id) == [(9.0, "done", "copied")]


def test_a_failing_batched_write_is_lost_alone(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    job = store.create_job(Endpoint("hostA", b"/a"), Endpoint("hostB", b"/b"), JobOptions(), 3, 1.0)
    store.add_decision(job.id, 1.0, "wait", "first")
    store.add_decision(424242, 1.5, "wait", "no such job")  # breaks the foreign key
    store.save_job(replace(job, state=JobState.RUNNING))
    store.add_decision(job.id, 2.0, "start", "second")
    with caplog.at_level(logging.ERROR, "zcrepl.controller.store"):
        asyncio.run(store.flush())
    assert [r.__dict__["kv"]["call"] for r in caplog.records] == ["add_decision"]
    assert [r for _, _, r in store.decisions(job.id)] == ["first", "second"]
    assert store.get_job(job.id).state is JobState.RUNNING  # type: ignore[union-attr]


def test_a_join_token_is_spent_once(store: Store) -> None:
    pki = PkiStore(store)

    async def go() -> list[bool]:
        await pki.add_token("secret", "hostR", 1.0, 100.0)
        return [await pki.spend_token("secret", 2.0), await pki.spend_token("secret", 3.0),
                await pki.spend_token("unknown", 3.0)]

    assert asyncio.run(go()) == [True, False, False]
