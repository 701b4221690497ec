"""Single-use, expiring data-port tickets, bound to the peer the controller named."""

from __future__ import annotations

import pytest

from zcrepl.agent.transfer.peer import KTLS, TLS, Binding, Peer, normalise, resolve
from zcrepl.agent.transfer.server import Grant, Refused, TicketBook


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


# -- bound to the peer (issue 9, finding 11) --------------------------------------------------------------------
HOST_A = Binding("hostA", frozenset({"10.0.0.1", "192.168.1.1"}))


def bound(bind: Binding, *, reusable: bool = False, expires: float = 110.0) -> Grant:
    return Grant(1, 1, expires, serve=lambda ch: None, reusable=reusable, bind=bind)


def test_a_bound_ticket_from_another_address_is_refused_and_stays_valid() -> None:
    book = TicketBook(Clock())
    t = b"b" * 32
    book.register(t, bound(HOST_A))
    with pytest.raises(Refused, match=r"this ticket is for hostA, which connects from 10\.0\.0\.1, 192\.168\.1\.1; "
                                      r"this connection came from 10\.9\.9\.9"):
        book.take(t, 1, 1, peer=Peer("10.9.9.9"))
    with pytest.raises(Refused):
        book.take(t, 1, 1)  # nobody to check: refused too
    g = book.take(t, 1, 1, peer=Peer("192.168.1.1"))  # the real source still gets in, once
    assert g is not None
    assert book.take(t, 1, 1, peer=Peer("192.168.1.1")) is None


def test_with_tls_the_certificate_must_name_the_source_agent() -> None:
    book = TicketBook(Clock())
    t = b"c" * 32
    book.register(t, bound(HOST_A))
    with pytest.raises(Refused, match="this ticket is for agent hostA; the connection's certificate is agent hostC"):
        book.take(t, 1, 1, peer=Peer("10.0.0.1", "hostC", TLS))
    assert book.take(t, 1, 1, peer=Peer("10.0.0.1", "hostA", TLS)) is not None


def test_an_encrypted_ticket_refuses_plaintext() -> None:
    book = TicketBook(Clock())
    t = b"e" * 32
    book.register(t, bound(Binding("hostA", frozenset({"10.0.0.1"}), encrypt=True)))
    with pytest.raises(Refused, match="must be encrypted and the connection is plaintext"):
        book.take(t, 1, 1, peer=Peer("10.0.0.1"))
    assert book.take(t, 1, 1, peer=Peer("10.0.0.1", "hostA", KTLS)) is not None


def test_a_reusable_ticket_expires() -> None:
    clock = Clock()
    book = TicketBook(clock)
    t = b"w" * 32
    book.register(t, bound(HOST_A, reusable=True, expires=160.0))
    for _ in range(3):
        assert book.take(t, 1, 1, peer=Peer("10.0.0.1")) is not None  # reusable while it lives
    clock.now = 161.0
    assert book.take(t, 1, 1, peer=Peer("10.0.0.1")) is None
    book.register(t, bound(HOST_A, reusable=True, expires=200.0))
    clock.now = 250.0
    book.expire()
    assert book.take(t, 1, 1, peer=Peer("10.0.0.1")) is None


def test_data_tickets_narrow_to_the_control_connection() -> None:
    narrowed = HOST_A.narrowed(Peer("192.168.1.1", "hostA", TLS))
    assert narrowed == Binding("hostA", frozenset({"192.168.1.1"}), encrypt=True)
    assert narrowed.refusal(Peer("10.0.0.1", "hostA", TLS))  # the other address of hostA: not for this session
    assert Binding().narrowed(Peer("127.0.0.1")) == Binding("", frozenset({"127.0.0.1"}), False)


def test_addresses_are_compared_in_one_form() -> None:
    assert normalise("::ffff:10.0.0.1") == "10.0.0.1"
    assert normalise("[fe80::1%eth0]") == "fe80::1"
    assert resolve(["10.0.0.1", "localhost", ""]) >= {"10.0.0.1", "127.0.0.1"}
    assert resolve(["no-such-host.invalid"]) == frozenset()
