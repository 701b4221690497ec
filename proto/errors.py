"""Domain errors <-> gRPC status codes, in one place for servers (``proto/servererrors.py``) and clients.

Nothing here touches ``grpc.aio`` when imported: zc-ctl imports this module and leaves gRPC's asyncio half unloaded
(``cli/deferred.py``)."""

from __future__ import annotations

import grpc

from zcrepl.core import errors as e

_TO_CODE: list[tuple[type[e.ZcError], grpc.StatusCode]] = [
    (e.UnknownHost, grpc.StatusCode.NOT_FOUND),
    (e.UnknownJob, grpc.StatusCode.NOT_FOUND),
    (e.InvalidPath, grpc.StatusCode.INVALID_ARGUMENT),
    (e.ConfigError, grpc.StatusCode.INVALID_ARGUMENT),
    (e.UserError, grpc.StatusCode.INVALID_ARGUMENT),
    (e.Conflict, grpc.StatusCode.FAILED_PRECONDITION),
    (e.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (e.Unavailable, grpc.StatusCode.UNAVAILABLE),
]
_FROM_CODE: dict[grpc.StatusCode, type[e.ZcError]] = {
    grpc.StatusCode.NOT_FOUND: e.UserError,
    grpc.StatusCode.INVALID_ARGUMENT: e.UserError,
    grpc.StatusCode.FAILED_PRECONDITION: e.Conflict,
    grpc.StatusCode.PERMISSION_DENIED: e.PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: e.PermissionDenied,
    grpc.StatusCode.UNAVAILABLE: e.Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: e.Unavailable,
}


def code_for(err: e.ZcError) -> grpc.StatusCode:
    for cls, code in _TO_CODE:
        if isinstance(err, cls):
            return code
    return grpc.StatusCode.INTERNAL


def from_rpc_error(err: grpc.RpcError, target: str) -> e.ZcError:
    """Turn a client-side RpcError into a domain error whose message says what to do next."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = (err.details() if hasattr(err, "details") else "") or str(code)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return e.Unavailable(
            f"cannot reach the controller at {target} ({details}); check that zc-controller runs there, "
            "or pass --controller HOST:PORT / set ZC_CONTROLLER"
        )
    return _FROM_CODE.get(code, e.ZcError)(details)
