"""The zcrepl error tree. Errors are translated at boundaries with ``raise ... from err``.

::

    ZcError                      every error a person may see; the message names host, path, next step
    ├── UserError                bad input from the operator (zc-ctl exits 2)
    │   ├── UnknownHost          no agent by that name ever registered      -> NOT_FOUND
    │   ├── UnknownJob           no job with that id                        -> NOT_FOUND
    │   ├── InvalidPath          malformed path, or outside the exports     -> INVALID_ARGUMENT
    │   ├── InvalidArgument      a name, address or number out of its range -> INVALID_ARGUMENT
    │   └── ConfigError          bad flag, TOML key or environment value
    ├── Conflict                 the request contradicts the current state  -> FAILED_PRECONDITION
    ├── PermissionDenied         the caller's certificate does not allow it  -> PERMISSION_DENIED
    ├── Unavailable              the controller or an agent cannot be reached -> UNAVAILABLE
    └── TransferError            the data plane failed for a job attempt
        ├── ProtocolError        the peer sent something malformed or lied (connection dropped)
        ├── UnsafePath           a name or path would leave the root         (never retried)
        ├── NoSpace              the destination filesystem is full           (not retried: free space first)
        └── Cancelled            the controller cancelled the attempt
"""

from __future__ import annotations


class ZcError(Exception):
    """Base of every zcrepl error. ``retryable`` tells the scheduler whether another attempt may help."""

    retryable: bool = False


class UserError(ZcError):
    pass


class UnknownHost(UserError):
    pass


class UnknownJob(UserError):
    pass


class InvalidPath(UserError):
    pass


class InvalidArgument(UserError):
    pass


class ConfigError(UserError):
    pass


class Conflict(ZcError):
    pass


class PermissionDenied(ZcError):
    pass


class Unavailable(ZcError):
    retryable = True


class TransferError(ZcError):
    retryable = True


class ProtocolError(TransferError):
    retryable = True


class UnsafePath(TransferError):
    retryable = False


class NoSpace(TransferError):
    """The destination's filesystem cannot hold what the job still has to write; another attempt would fail the
    same way until someone frees space."""

    retryable = False


class Cancelled(TransferError):
    retryable = False
