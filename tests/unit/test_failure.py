"""The one mapping from what ended a data-plane attempt to its message and whether a retry may help."""

from __future__ import annotations

import errno
import os

import pytest

from zcrepl.agent.transfer.failure import Failure, explain
from zcrepl.core.errors import (
    Cancelled,
    ConfigError,
    NoSpace,
    ProtocolError,
    TransferError,
    Unavailable,
    UnsafePath,
)


def _os(code: int) -> OSError:
    return OSError(code, os.strerror(code))


@pytest.mark.parametrize(("err", "expected"), [
    (Cancelled("cancelled by the controller"), Failure("cancelled by the controller", False, cancelled=True)),
    (ProtocolError("RESULT frame of 3 bytes"), Failure("RESULT frame of 3 bytes", True)),
    (TransferError("the destination aborted: x"), Failure("the destination aborted: x", True)),
    (UnsafePath("hostB:/d/../x: leaves the root"), Failure("hostB:/d/../x: leaves the root", False)),
    (NoSpace("hostB:/d: the filesystem is full"), Failure("hostB:/d: the filesystem is full", False)),
    (Unavailable("hostB is offline"), Failure("hostB is offline", True)),
    (ConfigError("hostA has no TLS material"), Failure("hostA has no TLS material", False)),
    (TimeoutError("timed out"), Failure("nothing arrived for 60s (io_timeout); check the network between hostA and "
                                        "hostB, the job is retried", True)),
    (_os(errno.ECONNRESET), Failure(os.strerror(errno.ECONNRESET), True)),
    (_os(errno.EACCES), Failure(os.strerror(errno.EACCES), True)),
    (OSError("no errno"), Failure("no errno", True)),
    (_os(errno.ENOSPC), Failure(f"full: {os.strerror(errno.ENOSPC)}", False)),
    (_os(errno.EDQUOT), Failure(f"full: {os.strerror(errno.EDQUOT)}", False)),
    (KeyError("bug"), Failure("internal error: KeyError('bug'); see the agent log", True, unexpected=True)),
], ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else "")
def test_explain(err: BaseException, expected: Failure) -> None:
    assert explain(err, io_timeout=60, between="hostA and hostB", full=lambda why: f"full: {why}") == expected


def test_without_context_the_sentences_still_say_what_to_do() -> None:
    assert explain(TimeoutError()).message == ("nothing arrived; check the network between the two agents, "
                                               "the job is retried")
    full = explain(_os(errno.ENOSPC))
    assert not full.retryable and "free some space" in full.message


def test_error_keeps_the_verdict() -> None:
    err = explain(_os(errno.ENOSPC)).error("local copy failed: ")
    assert type(err) is TransferError and not err.retryable and str(err).startswith("local copy failed: the filesystem")
    assert explain(_os(errno.EPIPE)).error().retryable
    assert isinstance(explain(Cancelled("stop")).error(), Cancelled)
