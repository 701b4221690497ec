"""Durable controller state behind one interface, on SQLite (the default, one machine) or PostgreSQL.

No call blocks the event loop. Every statement runs on the store's own thread, in the order it was asked for:
writes are queued and the caller goes on at once (the engine is synchronous), committed in batches of one
transaction each; reads and ``flush`` wait, on that thread, behind everything queued before them, so they see
every earlier write, and a reply sent after ``await store.flush()`` names committed state. Ids of new jobs and
watch rules are handed out here (the largest stored one plus one, read at start-up), so creating one does not
wait for the database either: one controller writes at a time.

``--store`` (TOML ``store``, env ``ZC_STORE``) is a SQLite file or a ``postgresql://`` URL; empty means
``STATE_DIR/controller.sqlite3``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from zcrepl.controller.store_migrations import migrate
from zcrepl.controller.store_sql import Db, JobsSql, SqliteDb
from zcrepl.core.config import is_postgres
from zcrepl.core.logs import kv
from zcrepl.core.types import AgentInfo, Endpoint, Job, JobOptions, JobState, PlanItem, Skipped, TransferStats

log = logging.getLogger(__name__)
T = TypeVar("T")
BATCH = 1000  # statements per transaction at most: a long queue is committed in bounded steps
RETRY_MAX = 5.0  # seconds between tries while the database is unreachable
SQLITE_FILE = "controller.sqlite3"


def open_db(spec: str, state_dir: str) -> Db:
    """A connection for ``spec`` (a SQLite path or a PostgreSQL URL; empty: the state dir's SQLite file)."""
    if is_postgres(spec):
        from zcrepl.controller.store_pg import PgDb  # psycopg loads only for a PostgreSQL store
        return PgDb(spec)
    path = spec or os.path.join(state_dir, SQLITE_FILE)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return SqliteDb(path)


def open_store(spec: str, state_dir: str) -> Store:
    return Store(open_db(spec, state_dir))


@dataclass
class _Op:
    name: str
    fn: Callable[[], Any]
    future: Future[Any] | None  # None: a write nobody waits for (its failure is logged)
    generation: int = 0  # the store's generation when it was queued (see Store.fence)
    parts: tuple[_Op, ...] = ()  # writes made one op by Store.together, each timed under its own name


_STOP = _Op("stop", lambda: None, None, -1)


class Fenced(RuntimeError):
    """The call was queued before the controller stopped leading, and dropped uncommitted."""


class Store:
    def __init__(self, db: Db) -> None:
        self.db = db
        self.path = db.where
        self.sql = JobsSql(db)
        try:
            migrate(db)
            with db.transaction():
                self._job_id = self.sql.max_job_id()
        except BaseException:
            db.close()
            raise
        self.timer: Callable[[str, float], None] | None = None  # the metrics' per-call latency, when on
        self.generation = 0  # moved on by fence(): calls queued before are dropped
        self._q: queue.SimpleQueue[_Op] = queue.SimpleQueue()
        self._closing = False
        self._together: list[_Op] | None = None
        self._thread = threading.Thread(target=self._run, name="zc-store", daemon=True)
        self._thread.start()

    # -- the machinery ------------------------------------------------------------------------------
    def write(self, name: str, fn: Callable[..., Any], *args: Any) -> None:
        """Queue a statement; the caller does not wait (``flush`` does)."""
        if self._closing:
            log.error("a store write after the store closed is lost", extra=kv(call=name, store=self.path))
            return
        if self._together is not None:
            self._together.append(_Op(name, lambda: fn(*args), None, self.generation))
            return
        self._q.put(_Op(name, lambda: fn(*args), None, self.generation))

    @contextmanager
    def together(self, name: str) -> Iterator[None]:
        """The writes queued inside the block commit in one transaction, all or none: a job and the request id
        that made it (requests.py) must not be split by a batch boundary and a crash between the two."""
        if self._together is not None:  # nested: the outer block commits
            yield
            return
        self._together = []
        try:
            yield
        finally:
            parts, self._together = self._together, None
            if parts:
                self._q.put(_Op(name, _nothing, None, self.generation, tuple(parts)))

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        if self._closing or not self._thread.is_alive():
            raise RuntimeError(f"the store {self.path} is closed")
        fut: Future[T] = Future()
        self._q.put(_Op(getattr(fn, "__name__", "call"), lambda: fn(*args), fut, self.generation))
        return fut

    def fence(self) -> None:
        """This controller stopped leading: whatever it queued and the database has not committed yet (the
        database may be out of reach) is dropped, so a deposed leader's changes never land after the next
        leader's; whoever waits on one of them gets ``Fenced``. Calls queued from now on run as usual."""
        self.generation += 1

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the store's thread after every queued write; the loop serves on meanwhile."""
        return await asyncio.wrap_future(self.submit(fn, *args))

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """The blocking form of ``call``, for start-up, tools and tests: refused on a running event loop."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self.submit(fn, *args).result()
        raise RuntimeError(f"{getattr(fn, '__name__', fn)}: a blocking store call on the event loop; "
                           "use 'await store.call(...)'")

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        await self.call(_nothing)

    def close(self) -> None:
        """Commit what is queued, stop the thread, close the connection (once; again is harmless)."""
        if self._closing and not self._thread.is_alive():
            return
        if self._thread.is_alive():
            self._q.put(_STOP)
            self._thread.join()
        self._closing = True
        self.db.close()

    def _run(self) -> None:
        while True:
            ops = [self._q.get()]
            while len(ops) < BATCH and ops[-1] is not _STOP:
                try:
                    ops.append(self._q.get_nowait())
                except queue.Empty:
                    break
            stop = ops[-1] is _STOP
            if stop:
                self._closing = True
                ops.pop()
            # A read whose caller gave up (a cancelled RPC) is dropped; the others are marked running, after
            # which they can no longer be cancelled.
            ops = [op for op in ops if op.future is None or op.future.set_running_or_notify_cancel()]
            ops = self._current(ops)
            if ops:
                try:
                    self._execute(ops)
                except BaseException as err:  # the thread must outlive any one batch, or every caller hangs
                    log.exception("the store's thread failed a batch", extra=kv(store=self.path))
                    for op in ops:
                        if op.future is not None and not op.future.done():
                            op.future.set_exception(err)
            if stop:
                return

    def _execute(self, ops: list[_Op]) -> None:
        delay = 0.1
        while True:
            try:
                results = self._batch(ops)
            except Exception as err:
                if self.db.transient(err) and not self._closing:
                    log.error("the store cannot be written; queued changes wait and are retried (check the "
                              "database server, its disk and the URL)",
                              extra=kv(store=self.path, error=str(err).strip(), queued=len(ops)))
                    time.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX)
                    ops = self._current(ops)
                    if not ops:
                        return
                    continue
                if len(ops) > 1:
                    for op in ops:  # one bad statement must not take the others in its transaction with it
                        self._execute([op])
                    return
                self._failed(ops[0], err)
                return
            for op, result in zip(ops, results, strict=True):
                if op.future is not None:
                    op.future.set_result(result)
            return

    def _current(self, ops: list[_Op]) -> list[_Op]:
        """``ops`` without those queued before the last fence (dropped, their waiters told)."""
        stale = [op for op in ops if op.generation < self.generation and op is not _STOP]
        if not stale:
            return ops
        for op in stale:
            if op.future is not None and not op.future.done():
                op.future.set_exception(Fenced(f"{op.name}: this controller stopped leading before it was "
                                               "committed; it was dropped"))
        log.warning("changes of a deposed leader dropped uncommitted", extra=kv(store=self.path, calls=len(stale)))
        dropped = {id(op) for op in stale}
        return [op for op in ops if id(op) not in dropped]

    def _batch(self, ops: list[_Op]) -> list[Any]:
        out = []
        with self.db.transaction():
            for op in ops:
                for part in op.parts or (op,):
                    started = time.perf_counter()
                    result = part.fn()
                    if self.timer is not None:
                        self.timer(part.name, time.perf_counter() - started)
                out.append(result)
        return out

    @staticmethod
    def _failed(op: _Op, err: Exception) -> None:
        if op.future is not None:
            op.future.set_exception(err)
        else:
            log.error("a store write failed and is lost", extra=kv(call=op.name, error=str(err).strip()))

    # -- jobs: writes ---------------------------------------------------------------------------------
    def create_job(self, src: Endpoint, dst: Endpoint, options: JobOptions, max_attempts: int, now: float) -> Job:
        self._job_id += 1
        job = Job(self._job_id, JobState.QUEUED, src, dst, options, created_at=now, updated_at=now,
                  max_attempts=max_attempts)
        self.write("create_job", self.sql.create_job, job)
        return job

    def save_job(self, job: Job) -> None:
        self.write("save_job", self.sql.save_job, job)

    def start_attempt(self, job_id: int, number: int, now: float, source: bytes = b"") -> None:
        self.write("start_attempt", self.sql.start_attempt, job_id, number, now, source)

    def set_group(self, job_ids: list[int], group_id: int) -> None:
        self.write("set_group", self.sql.set_group, list(job_ids), group_id)

    def end_attempt(self, job_id: int, number: int, now: float, error: str, stats: TransferStats) -> None:
        self.write("end_attempt", self.sql.end_attempt, job_id, number, now, error, stats)

    def save_skipped(self, job_id: int, attempt: int, items: list[Skipped]) -> None:
        self.write("save_skipped", self.sql.save_skipped, job_id, attempt, list(items))

    def save_plan(self, job_id: int, attempt: int, items: list[PlanItem]) -> None:
        self.write("save_plan", self.sql.save_plan, job_id, attempt, list(items))

    def add_decision(self, job_id: int, at: float, kind: str, reason: str, details: str = "{}") -> None:
        self.write("add_decision", self.sql.add_decision, job_id, at, kind, reason, details)

    def upsert_agent(self, info: AgentInfo, now: float) -> None:
        self.write("upsert_agent", self.sql.upsert_agent, info, now)

    def remove_agent(self, name: str) -> None:
        self.write("remove_agent", self.sql.remove_agent, name)

    def touch_agent(self, name: str, now: float) -> None:
        self.write("touch_agent", self.sql.touch_agent, name, now)

    def touch_agents(self, names: list[str], now: float) -> None:
        """The leader's periodic word that these agents are online, for followers answering from the store."""
        self.write("touch_agents", self.sql.touch_agents, list(names), now)

    def reload_ids(self) -> None:
        """Read the largest job id again: a controller taking the lead after another (blocking, off the loop)."""
        self._job_id = self.run(self.sql.max_job_id)

    # -- jobs: blocking reads (start-up, tools, tests; the loop uses ``await store.call(store.sql.X)``) --------
    def get_job(self, job_id: int) -> Job | None:
        return self.run(self.sql.get_job, job_id)

    def list_jobs(self, states: tuple[JobState, ...] = (), limit: int = 0, group_id: int = 0) -> list[Job]:
        return self.run(self.sql.list_jobs, states, limit, group_id)

    def job_counts(self) -> dict[JobState, int]:
        return self.run(self.sql.job_counts)

    def decisions(self, job_id: int) -> list[tuple[float, str, str]]:
        return self.run(self.sql.decisions, job_id)

    def agents(self) -> dict[str, tuple[AgentInfo, float]]:
        return self.run(self.sql.agents)

    def recover_interrupted(self, now: float, keep: frozenset[int] = frozenset()) -> list[int]:
        return self.run(self.sql.recover_interrupted, now, keep)


def _nothing() -> None:
    return None
