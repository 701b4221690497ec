"""A throwaway PostgreSQL server (Debian's postgresql package: initdb + pg_ctl on a temp dir, its Unix socket in that
dir, as the OS user ``postgres`` when run as root), for the test session (tests/conftest.py) and the benchmarks
(bench/scale.py, bench/engine_pass.py --store postgres). Its settings favour speed over durability (fsync off):
figures taken on it are the database's CPU and round trips, not a disk's."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile

PG_USER = "postgres"


def pg_bindir() -> str:
    found = shutil.which("pg_ctl")
    if found:
        return os.path.dirname(found)
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2].split(".")[0]))
    return dirs[-1] if dirs else ""


class PgServer:
    def __init__(self) -> None:
        self.bindir = pg_bindir()
        # Under /tmp whatever TMPDIR says: the postgres user must reach it, and a socket path is short.
        self.base = tempfile.mkdtemp(prefix="zc-pg-", dir="/tmp" if os.path.isdir("/tmp") else None)
        self.data = os.path.join(self.base, "data")
        self.database = "zc_test"
        self._as: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            try:
                pw = pwd.getpwnam(PG_USER)
            except KeyError:
                raise RuntimeError(f"no OS user {PG_USER!r} to run PostgreSQL as (root cannot): install Debian's "
                                   "postgresql package, which creates it") from None
            os.chown(self.base, pw.pw_uid, pw.pw_gid)
            self._as = ["runuser", "-u", PG_USER, "--"]
        self._run = subprocess.run
        self._pg("initdb", "-D", self.data, "-A", "trust", "-U", PG_USER, "-E", "UTF8", "--no-sync")
        self.options = (f"-k {self.base} -c listen_addresses='' -c fsync=off -c synchronous_commit=off "
                        "-c full_page_writes=off -c max_connections=200")
        self.start()
        self.admin(f"CREATE DATABASE {self.database} TEMPLATE template0")

    def start(self) -> None:
        self._pg("pg_ctl", "-D", self.data, "-l", os.path.join(self.base, "log"), "-o", self.options, "-w", "start")

    def halt(self) -> None:
        """Stop the server, keeping its data (``start`` brings it back): a database outage."""
        self._pg("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def _pg(self, tool: str, *args: str) -> None:
        out = self._run([*self._as, os.path.join(self.bindir, tool), *args], capture_output=True, text=True,
                        check=False, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"{tool} failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")

    def url(self, db: str) -> str:
        return f"postgresql://{PG_USER}@/{db}?host={self.base}"

    def admin(self, sql: str, db: str = "postgres") -> None:
        import psycopg  # only when a test or bench uses the server: collection stays cheap

        with psycopg.connect(self.url(db), autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def empty_database(self) -> str:
        """The session's database, emptied: no table, no row, no schema version (and nobody connected)."""
        self.admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                   "AND pid <> pg_backend_pid(); DROP SCHEMA IF EXISTS public CASCADE; CREATE SCHEMA public",
                   self.database)
        return self.database

    def stop(self) -> None:
        try:
            self._pg("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)
