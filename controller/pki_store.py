"""Join tokens and the certificates the controller issued, in its SQLite database (additive tables).

Only a token's SHA-256 is stored: a copy of the database does not let anyone enrol.
"""

from __future__ import annotations

import hashlib
import sqlite3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS join_tokens (
    digest BLOB PRIMARY KEY, agent TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL NOT NULL,
    used_at REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS issued_certs (
    serial TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL, issued_at REAL NOT NULL,
    not_after REAL NOT NULL, revoked_at REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS issued_certs_name ON issued_certs(name);
"""


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class PkiStore:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.db.executescript(_SCHEMA)

    def add_token(self, secret: str, agent: str, now: float, expires_at: float) -> None:
        self.db.execute("INSERT INTO join_tokens (digest, agent, created_at, expires_at) VALUES (?,?,?,?)",
                        (digest(secret), agent, now, expires_at))
        # Spent and expired tokens are of no further use; keep the table small.
        self.db.execute("DELETE FROM join_tokens WHERE expires_at < ?", (now - 86400,))

    def check_token(self, secret: str, now: float) -> tuple[str, str]:
        """(agent, "") when the token is valid, else ("", why). ``spend_token`` uses it up."""
        row = self.db.execute("SELECT agent, expires_at, used_at FROM join_tokens WHERE digest=?",
                              (digest(secret),)).fetchone()
        if row is None:
            return "", "the join token is unknown to this controller"
        agent, expires_at, used_at = row
        if used_at:
            return "", "the join token was already used; create a new one with zc-ctl token create"
        if expires_at < now:
            return "", "the join token expired; create a new one with zc-ctl token create"
        return str(agent), ""

    def spend_token(self, secret: str, now: float) -> bool:
        """Mark the token used; False when someone spent it first."""
        cur = self.db.execute("UPDATE join_tokens SET used_at=? WHERE digest=? AND used_at=0", (now, digest(secret)))
        return cur.rowcount == 1

    def record_cert(self, serial: int, kind: str, name: str, now: float, not_after: float) -> None:
        self.db.execute("INSERT OR REPLACE INTO issued_certs (serial, kind, name, issued_at, not_after) "
                        "VALUES (?,?,?,?,?)", (str(serial), kind, name, now, not_after))

    def serials_of(self, name: str) -> list[int]:
        return [int(r[0]) for r in self.db.execute("SELECT serial FROM issued_certs WHERE name=?", (name,))]

    def names_of(self, serials: list[int]) -> dict[int, str]:
        out: dict[int, str] = {}
        for s in serials:
            row = self.db.execute("SELECT name FROM issued_certs WHERE serial=?", (str(s),)).fetchone()
            if row is not None:
                out[s] = str(row[0])
        return out
