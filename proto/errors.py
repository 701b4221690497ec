"""Domain errors <-> gRPC status codes, in one place for servers (interceptor) and clients."""

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



class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps domain errors raised by async handlers to status codes; anything else stays INTERNAL."""

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request, context):  # type: ignore[no-untyped-def]
                try:
                    return await inner_uu(request, context)
                except e.ZcError as err:
                    await context.abort(code_for(err), str(err))

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def unary_stream(request, context):  # type: ignore[no-untyped-def]
                try:
                    async for item in inner_us(request, context):
                        yield item
                except e.ZcError as err:
                    await context.abort(code_for(err), str(err))

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, handler.request_deserializer, handler.response_serializer
            )
        return handler
