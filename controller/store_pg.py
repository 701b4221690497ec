"""The PostgreSQL side of the store: a psycopg 3 connection pool behind the ``Db`` interface of store_sql.py.

The store's thread holds one pooled connection per transaction; the pool replaces a connection that broke
(the server restarted, the network dropped), so the next batch runs on a fresh one.

Writes go out in bulk. ``batched`` writes (a job's mutable fields, explain records: ~20,000 of a scheduling pass
over 10,000 jobs) wait per statement until the next other statement or the commit and go out as one
``executemany`` each; and a transaction runs in psycopg's pipeline mode, so statements go out without waiting for
each one's reply: the connection waits only where a result is read (``fetchone``/``fetchall``) and at the
commit. A statement that fails raises at the next wait, aborting the rest of the transaction; the store then
retries the batch one write per transaction (store.py), as with SQLite.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from zcrepl.controller.store_sql import Cursor

_PLACEHOLDER = re.compile(r"\?")
OPEN_TIMEOUT = 10.0  # seconds to reach the server at start-up before giving up with a sentence


def redact(url: str) -> str:
    """The URL without its password, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _why(url: str) -> str:
    """The server's or libpq's own words for a failed connection (the pool only says it timed out)."""
    try:
        psycopg.connect(url, connect_timeout=5).close()
    except psycopg.Error as err:
        return " ".join(str(err).split())
    return "the connection succeeded on a retry: the server is slow to accept"


class PgDb:
    dialect = "postgres"
    order_column = "id"

    def __init__(self, url: str, open_timeout: float = OPEN_TIMEOUT) -> None:
        self.where = redact(url)
        self._sql: dict[str, str] = {}
        self._conn: psycopg.Connection[Any] | None = None
        self._batched: dict[str, list[Sequence[object]]] = {}  # statement -> rows, in the order they came
        self.pool = ConnectionPool(url, min_size=1, max_size=2, open=False, name="zc-store",
                                   kwargs={"application_name": "zc-controller"})
        try:
            self.pool.open(wait=True, timeout=open_timeout)
        except PoolTimeout as err:
            self.pool.close()
            raise RuntimeError(f"cannot reach PostgreSQL at {self.where} within {open_timeout:g}s "
                               f"({_why(url)}); check that the server runs, the URL (user, host, database) and "
                               "pg_hba.conf, then start zc-controller again") from err

    def _translate(self, sql: str) -> str:
        out = self._sql.get(sql)
        if out is None:
            out = self._sql[sql] = _PLACEHOLDER.sub("%s", sql)
        return out

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None:
            raise RuntimeError("PostgreSQL statements run inside transaction()")
        return self._conn

    def execute(self, sql: str, args: Sequence[object] = ()) -> Cursor:
        self._flush()
        return self._connection().execute(self._translate(sql), args or None)  # type: ignore[arg-type]

    def executemany(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        self._flush()
        with self._connection().cursor() as cur:
            cur.executemany(self._translate(sql), rows)  # type: ignore[arg-type]

    def batched(self, sql: str, args: Sequence[object]) -> None:
        self._connection()
        self._batched.setdefault(sql, []).append(args)

    def _flush(self) -> None:
        if self._batched:
            batched, self._batched = self._batched, {}
            with self._connection().cursor() as cur:
                for sql, rows in batched.items():
                    cur.executemany(self._translate(sql), rows)  # type: ignore[arg-type]

    @contextmanager
    def transaction(self) -> Iterator[None]:
        # The pool's context commits when the block ends cleanly and rolls back when it raises.
        with self.pool.connection() as conn, conn.pipeline():
            self._conn = conn
            try:
                yield
                self._flush()
            finally:
                self._batched = {}  # a failed transaction's are rolled back with it
                self._conn = None

    def transient(self, err: BaseException) -> bool:
        return isinstance(err, (psycopg.OperationalError, PoolTimeout))

    def close(self) -> None:
        self.pool.close()
