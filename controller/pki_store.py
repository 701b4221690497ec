"""Join tokens and the certificates the controller issued, in its store (either backend).

Only a token's SHA-256 is stored: a copy of the database does not let anyone enrol. The security services are
asynchronous, so every call here is awaited on the store's thread.
"""

from __future__ import annotations

import hashlib

from zcrepl.controller.store import Store
from zcrepl.controller.store_sql import Db


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class PkiSql:
    def __init__(self, db: Db) -> None:
        self.db = db

    def add_token(self, token_digest: bytes, agent: str, now: float, expires_at: float) -> None:
        self.db.execute("INSERT INTO join_tokens (digest, agent, created_at, expires_at) VALUES (?,?,?,?)",
                        (token_digest, agent, now, expires_at))
        # Spent and expired tokens are of no further use; keep the table small.
        self.db.execute("DELETE FROM join_tokens WHERE expires_at < ?", (now - 86400,))

    def token(self, token_digest: bytes) -> tuple[str, float, float] | None:
        row = self.db.execute("SELECT agent, expires_at, used_at FROM join_tokens WHERE digest=?",
                              (token_digest,)).fetchone()
        return (str(row[0]), float(row[1]), float(row[2])) if row else None

    def spend_token(self, token_digest: bytes, now: float) -> bool:
        # RETURNING, not rowcount: PostgreSQL pipelines statements, and only fetching a result waits for it.
        return self.db.execute("UPDATE join_tokens SET used_at=? WHERE digest=? AND used_at=0 RETURNING digest",
                               (now, token_digest)).fetchone() is not None

    def record_cert(self, serial: int, kind: str, name: str, now: float, not_after: float) -> None:
        self.db.execute("INSERT INTO issued_certs (serial, kind, name, issued_at, not_after) VALUES (?,?,?,?,?)"
                        " ON CONFLICT (serial) DO UPDATE SET kind=excluded.kind, name=excluded.name,"
                        " issued_at=excluded.issued_at, not_after=excluded.not_after, revoked_at=0",
                        (str(serial), kind, name, now, not_after))

    def serials_of(self, name: str) -> list[int]:
        return [int(r[0]) for r in self.db.execute("SELECT serial FROM issued_certs WHERE name=?", (name,)).fetchall()]

    def names_of(self, serials: list[int]) -> dict[int, str]:
        out: dict[int, str] = {}
        for s in serials:
            row = self.db.execute("SELECT name FROM issued_certs WHERE serial=?", (str(s),)).fetchone()
            if row is not None:
                out[s] = str(row[0])
        return out


class PkiStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.sql = PkiSql(store.db)

    async def add_token(self, secret: str, agent: str, now: float, expires_at: float) -> None:
        # Awaited: the operator is handed the token only once it is committed.
        await self.store.call(self.sql.add_token, digest(secret), agent, now, expires_at)

    async def check_token(self, secret: str, now: float) -> tuple[str, str]:
        """(agent, "") when the token is valid, else ("", why). ``spend_token`` uses it up."""
        row = await self.store.call(self.sql.token, digest(secret))
        if row is None:
            return "", "the join token is unknown to this controller"
        agent, expires_at, used_at = row
        if used_at:
            return "", "the join token was already used; create a new one with zc-ctl token create"
        if expires_at < now:
            return "", "the join token expired; create a new one with zc-ctl token create"
        return agent, ""

    async def spend_token(self, secret: str, now: float) -> bool:
        """Mark the token used; False when someone spent it first."""
        return await self.store.call(self.sql.spend_token, digest(secret), now)

    async def record_cert(self, serial: int, kind: str, name: str, now: float, not_after: float) -> None:
        await self.store.call(self.sql.record_cert, serial, kind, name, now, not_after)

    async def serials_of(self, name: str) -> list[int]:
        return await self.store.call(self.sql.serials_of, name)

    async def names_of(self, serials: list[int]) -> dict[int, str]:
        return await self.store.call(self.sql.names_of, serials)
