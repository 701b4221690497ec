"""Who may call what: the caller's identity from its certificate, and a table from method to the role it needs.

Roles nest: ``admin`` may do everything ``operator`` may, which may do everything ``read`` may. Agent
certificates may run the agent stream (and renew themselves) and nothing else; a controller certificate may
read agents' own APIs. A method missing from the table is refused for everyone (fail closed).

One interceptor per server authenticates every call before its handler runs: TLS 1.3, a certificate with
exactly one zcrepl identity, not revoked, and the role the method needs. Denials are PERMISSION_DENIED (or
UNAUTHENTICATED for no usable identity) with one sentence; every call that changes something is logged with the
caller's identity. The identity is handed to handlers through ``caller()``.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
from collections.abc import Callable
from typing import Any

import grpc

from zcrepl.core.identity import Identity
from zcrepl.core.logs import kv
from zcrepl.core.trust import Trust, peer_identity

log = logging.getLogger("zcrepl.audit")

READ, OPERATOR, ADMIN, AGENT, ANY = "read", "operator", "admin", "agent", "any"
_RANK = {READ: 1, OPERATOR: 2, ADMIN: 3}

_C = "/zcrepl.v1.Controller/"
_S = "/zcrepl.v1.Security/"
METHODS: dict[str, str] = {
    f"{_C}Connect": AGENT,
    f"{_C}SubmitJob": OPERATOR,
    f"{_C}SubmitFanout": OPERATOR,
    f"{_C}CancelJob": OPERATOR,
    f"{_C}GetJob": READ,
    f"{_C}ListJobs": READ,
    f"{_C}WatchJob": READ,
    f"{_C}ExplainJob": READ,
    f"{_C}ListAgents": READ,
    f"{_C}GetAgentHealth": READ,
    f"{_C}RemoveAgent": ADMIN,
    f"{_C}CreateWatchRule": OPERATOR,
    f"{_C}ListWatchRules": READ,
    f"{_C}PauseWatchRule": OPERATOR,
    f"{_C}ResumeWatchRule": OPERATOR,
    f"{_C}RemoveWatchRule": OPERATOR,
    f"{_C}CreateSchedule": OPERATOR,
    f"{_C}ListSchedules": READ,
    f"{_C}PauseSchedule": OPERATOR,
    f"{_C}ResumeSchedule": OPERATOR,
    f"{_C}RemoveSchedule": OPERATOR,
    f"{_S}CreateJoinToken": ADMIN,
    f"{_S}RevokeCertificate": ADMIN,
    f"{_S}ListRevoked": READ,
    f"{_S}RenewCertificate": AGENT,
    "/zcrepl.v1.Agent/GetHealth": READ,
    "/zcrepl.v1.Agent/GetInfo": READ,
    "/zcrepl.v1.Agent/ListSnapshots": READ,
    "/grpc.health.v1.Health/Check": ANY,
    "/grpc.health.v1.Health/Watch": ANY,
    "/grpc.health.v1.Health/List": ANY,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": READ,
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": READ,
}
# Calls that change state: logged with the caller's identity.
MUTATING = frozenset(m for m, role in METHODS.items() if role in (OPERATOR, ADMIN)) | {f"{_S}RenewCertificate"}

_caller: contextvars.ContextVar[Identity | None] = contextvars.ContextVar("zc_caller", default=None)


def caller() -> Identity | None:
    """The authenticated identity of the call being handled (None on an insecure daemon)."""
    return _caller.get()


def denial(ident: Identity, method: str) -> str | None:
    """Why ``ident`` may not call ``method``, in one sentence; None when it may."""
    need = METHODS.get(method)
    short = method.rsplit("/", 1)[-1]
    if need is None:
        return f"{short} is not a method anyone may call on this daemon"
    if need == ANY:
        return None
    if need == AGENT:
        return None if ident.kind == "agent" else f"{short} is for agents; {ident} is not an agent certificate"
    if ident.kind == "controller" and need == READ:
        return None
    if ident.kind != "operator":
        return (f"{ident} may not call {short}: it needs an operator certificate with the {need} role "
                "(zc-ctl pki issue DIR --operator NAME --role ROLE)")
    if _RANK[ident.role] < _RANK[need]:
        return f"{ident.name} has the {ident.role} role; {short} needs {need} (ask an admin for a certificate)"
    return None


def authenticate(auth: dict[str, list[bytes]], trust: Trust, cache: dict[bytes, Identity | None]
                 ) -> tuple[Identity | None, str]:
    """(identity, "") for a usable peer, else (None, why): TLS 1.3, one zcrepl identity, not revoked."""
    if auth.get("ssl_tls_version", [b""])[0] != b"TLSv1.3":
        return None, "TLS 1.3 is required"
    pems = auth.get("x509_pem_cert", [])
    if not pems:
        return None, "no client certificate was presented"
    ident = peer_identity(pems[0], cache)
    if ident is None:
        return None, "the client certificate carries no zcrepl identity (a SAN URI like zcrepl://agent/NAME)"
    if trust.revoked(ident.serial):
        return None, f"the certificate of {ident} is revoked"
    return ident, ""


class _Gate:
    def __init__(self, trust: Trust) -> None:
        self.trust = trust
        self._cache: dict[bytes, Identity | None] = {}

    def check(self, method: str, auth: dict[str, list[bytes]], peer: str
              ) -> tuple[Identity | None, grpc.StatusCode, str]:
        ident, why = authenticate(auth, self.trust, self._cache)
        if ident is None:
            log.warning("call refused", extra=kv(method=method, peer=peer, reason=why))
            return None, grpc.StatusCode.UNAUTHENTICATED, why
        refused = denial(ident, method)
        if refused is not None:
            log.warning("call denied", extra=kv(method=method, caller=ident.uri, peer=peer, reason=refused))
            return ident, grpc.StatusCode.PERMISSION_DENIED, refused
        if method in MUTATING:
            log.info("call", extra=kv(method=method, caller=ident.uri, peer=peer))
        return ident, grpc.StatusCode.OK, ""


def _wrap(handler: Any, guard: Callable[[Any, str], Any], kinds: dict[str, Callable[..., Any]]) -> Any:
    for attr, factory in kinds.items():
        inner = getattr(handler, attr)
        if inner is not None:
            return factory(guard(inner, attr), handler.request_deserializer, handler.response_serializer)
    return handler


_FACTORIES: dict[str, Callable[..., Any]] = {"unary_unary": grpc.unary_unary_rpc_method_handler,
              "unary_stream": grpc.unary_stream_rpc_method_handler,
              "stream_unary": grpc.stream_unary_rpc_method_handler,
              "stream_stream": grpc.stream_stream_rpc_method_handler}


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """The gate for a grpc.aio server (the controller)."""

    def __init__(self, trust: Trust) -> None:
        self._gate = _Gate(trust)

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None:
            return None
        gate = self._gate

        def guard(inner: Any, attr: str) -> Any:
            async def admit(context: Any) -> bool:
                ident, code, why = gate.check(method, context.auth_context(), context.peer())
                if code is not grpc.StatusCode.OK:
                    await context.abort(code, why)
                    return False
                _caller.set(ident)
                return True

            if inspect.isasyncgenfunction(inner):
                async def gen(request, context):  # type: ignore[no-untyped-def]
                    if await admit(context):
                        async for item in inner(request, context):
                            yield item
                return gen

            async def call(request, context):  # type: ignore[no-untyped-def]
                if await admit(context):
                    return await inner(request, context)
                return None
            return call

        return _wrap(handler, guard, _FACTORIES)
