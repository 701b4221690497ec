"""Domain errors raised by a grpc.aio server's handlers, turned into status codes (``proto/errors.py`` maps them).

Apart from ``proto/errors.py`` because subclassing ``grpc.aio.ServerInterceptor`` loads gRPC's asyncio API, which
zc-ctl, a client of that module, never loads (``cli/deferred.py``).
"""

from __future__ import annotations

import grpc

from zcrepl.core import errors as e
from zcrepl.proto.errors import code_for


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
