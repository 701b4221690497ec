"""Single-use, expiring data-port tickets."""

from __future__ import annotations

import pytest

from zcrepl.agent.transfer.server import Grant, TicketBook


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def grant(job: int = 1, attempt: int = 1, expires: float = 110.0, expired: list[int] | None = None) -> Grant:
    return Grant(job, attempt, expires, serve=lambda ch: None,
                 on_expired=lambda: expired.append(job) if expired is not None else None)


def test_a_ticket_works_once_for_its_own_job_and_attempt() -> None:
    book = TicketBook(Clock())
    t = b"k" * 32
    book.register(t, grant())
    assert book.take(t, 1, 2) is None  # wrong attempt: refused, and...
    assert book.take(t, 2, 1) is None  # ...wrong job: refused
    g = book.take(t, 1, 1)
    assert g is not None and (g.job_id, g.attempt) == (1, 1)
    assert book.take(t, 1, 1) is None  # single use


def test_unknown_and_expired_tickets_are_refused() -> None:
    clock, expired = Clock(), []
    book = TicketBook(clock)
    assert book.take(b"x" * 32, 1, 1) is None
    book.register(b"a" * 32, grant(1, expired=expired))
    book.register(b"b" * 32, grant(2, expires=200.0, expired=expired))
    clock.now = 150.0
    assert book.take(b"a" * 32, 1, 1) is None
    assert expired == [1]
    book.expire()
    assert expired == [1]  # grant 2 is still valid
    clock.now = 250.0
    book.expire()
    assert expired == [1, 2]
    assert book.take(b"b" * 32, 2, 1) is None


def test_revoke_and_length_check() -> None:
    book = TicketBook(Clock())
    book.register(b"r" * 32, grant(7, 3))
    assert book.revoke(7, 3) is True
    assert book.revoke(7, 3) is False
    assert book.take(b"r" * 32, 7, 3) is None
    with pytest.raises(ValueError):
        book.register(b"short", grant())
