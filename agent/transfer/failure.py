"""What an exception that ends a data-plane attempt means to the operator and the scheduler.

Send, receive, the same-host copy and watch sessions all end the same ways (the peer lied, the network went
quiet, the disk filled, a bug); ``explain`` is the one place that turns each into the sentence the job shows
and whether another attempt may help, so the four paths cannot drift apart.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass

from zcrepl.core.errors import Cancelled, TransferError, ZcError

_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


@dataclass(frozen=True)
class Failure:
    message: str
    retryable: bool
    cancelled: bool = False  # the controller asked for it: not an error to report
    unexpected: bool = False  # a bug: the caller logs the traceback

    def error(self, prefix: str = "") -> TransferError:
        """The failure as one TransferError, for a boundary that raises rather than reports."""
        err = Cancelled(self.message) if self.cancelled else TransferError(prefix + self.message)
        err.retryable = self.retryable
        return err


def explain(err: BaseException, *, io_timeout: float = 0.0, between: str = "",
            full: Callable[[str], str] | None = None) -> Failure:
    """``between``: "hostA and hostB", the two ends a silent network lies between; ``full``: phrases a full
    destination (what was left to write against what is free) from the system's own words."""
    if isinstance(err, Cancelled):
        return Failure(str(err) or "cancelled", retryable=False, cancelled=True)
    if isinstance(err, ZcError):  # already one sentence; its class knows whether a retry can help
        return Failure(str(err), err.retryable)
    if isinstance(err, TimeoutError):  # an OSError too: test it first
        waited = f" for {io_timeout:g}s (io_timeout)" if io_timeout else ""
        return Failure(f"nothing arrived{waited}; check the network between {between or 'the two agents'}, "
                       "the job is retried", retryable=True)
    if isinstance(err, OSError):
        text = err.strerror or str(err)
        if err.errno in _FULL:  # another attempt fails the same way until someone frees space
            return Failure(full(text) if full is not None else
                           f"the filesystem is full ({text}); free some space or choose another destination",
                           retryable=False)
        return Failure(text, retryable=True)
    return Failure(f"internal error: {err!r}; see the agent log", retryable=True, unexpected=True)
