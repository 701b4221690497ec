"""The Security and Enrollment gRPC services: join tokens (core/jointoken.py), enrolment, renewal, revocation."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

import grpc

from zcrepl.controller.authority import Authority
from zcrepl.controller.pki_store import PkiStore
from zcrepl.core import jointoken
from zcrepl.core.config import ControllerConfig
from zcrepl.core.errors import ConfigError, PermissionDenied, UserError
from zcrepl.core.paths import valid_host_name
from zcrepl.proto import security_pb2 as sp
from zcrepl.proto import security_pb2_grpc
from zcrepl.proto.auth import caller


class SecurityService(security_pb2_grpc.SecurityServicer):
    def __init__(self, authority: Authority, store: PkiStore, config: ControllerConfig,
                 enroll_port: Callable[[], int], on_revoked: Callable[[], None]) -> None:
        self.authority = authority
        self.store = store
        self.config = config
        self.enroll_port = enroll_port
        self.on_revoked = on_revoked

    async def CreateJoinToken(self, request: sp.JoinTokenRequest, context: grpc.aio.ServicerContext) -> sp.JoinToken:
        if not valid_host_name(request.agent):
            raise UserError(f"{request.agent!r} is not a valid agent name; use letters, digits, '.', '_' and '-'")
        if not self.authority.can_sign() or not self.enroll_port():
            raise UserError("this controller does not hold the CA key, so agents cannot enrol with it: start it "
                            "with --auto-pki or --ca-key FILE, or issue agent certificates with zc-ctl pki issue")
        ttl = request.ttl or self.config.token_ttl
        if not 60 <= ttl <= 7 * 86400:
            raise UserError(f"--ttl {ttl:g}s: choose 1m to 7d")
        now = time.time()
        secret = secrets.token_urlsafe(32)
        await self.store.add_token(secret, request.agent, now, now + ttl)
        fp = self.authority.fingerprint
        return sp.JoinToken(token=jointoken.make(self.enroll_port(), fp, secret), agent=request.agent,
                            expires_at=now + ttl, ca_fingerprint=fp)

    async def RenewCertificate(self, request: sp.RenewRequest, context: grpc.aio.ServicerContext
                               ) -> sp.IssuedCertificate:
        ident = caller()
        if ident is None or ident.kind != "agent":
            raise PermissionDenied("only an agent renews its own certificate")
        return await self._issue(request.csr_pem, ident.name)

    async def RevokeCertificate(self, request: sp.RevokeRequest, context: grpc.aio.ServicerContext
                                ) -> sp.RevokeResponse:
        if request.serial:
            if not request.serial.isdigit() or len(request.serial) > 60:
                raise UserError(f"serial {request.serial!r}: give the decimal serial zc-ctl pki show prints")
            serials = [int(request.serial)]
        elif request.name:
            serials = await self.store.serials_of(request.name)
            if not serials:
                raise UserError(f"this controller issued no certificate to {request.name!r}; a certificate made "
                                "with zc-ctl pki issue is revoked with zc-ctl pki revoke DIR NAME")
        else:
            raise UserError("name the certificate holder (or give --serial) to revoke")
        self.authority.revoke(serials)
        self.on_revoked()
        return await self._listing()

    async def ListRevoked(self, request: sp.ListRevokedRequest, context: grpc.aio.ServicerContext
                          ) -> sp.RevokeResponse:
        return await self._listing()

    async def _listing(self) -> sp.RevokeResponse:
        revoked = self.authority.revoked()
        names = await self.store.names_of(list(revoked))
        return sp.RevokeResponse(revoked=[sp.RevokedCertificate(serial=str(s), name=names.get(s, ""), revoked_at=at)
                                          for s, at in sorted(revoked.items(), key=lambda kv: kv[1])])

    async def _issue(self, csr_pem: bytes, name: str) -> sp.IssuedCertificate:
        try:
            issued = self.authority.sign(csr_pem, "agent", name, self.config.agent_cert_days)
        except ConfigError as err:
            raise UserError(str(err)) from err
        await self.store.record_cert(issued.serial, "agent", name, time.time(), issued.not_after)
        return sp.IssuedCertificate(cert_pem=issued.cert_pem, ca_pem=self.authority.trust.material.ca_pem, name=name,
                                    not_after=issued.not_after)


class EnrollmentService(security_pb2_grpc.EnrollmentServicer):
    """Served alone on the enrolment port: the token is the only credential accepted there."""

    def __init__(self, security: SecurityService) -> None:
        self.security = security

    async def Enroll(self, request: sp.EnrollRequest, context: grpc.aio.ServicerContext) -> sp.IssuedCertificate:
        _, pin, secret = jointoken.parse(request.token)
        if pin != self.security.authority.fingerprint:
            raise PermissionDenied("the join token was made by another cluster's controller (its CA differs)")
        store = self.security.store
        agent, why = await store.check_token(secret, time.time())
        if not agent:
            raise PermissionDenied(why)
        if request.name and request.name != agent:
            raise PermissionDenied(f"this join token is for agent {agent}, not {request.name}; start zc-agent with "
                                   f"--name {agent} (the token stays valid)")
        issued = await self.security._issue(request.csr_pem, agent)  # a bad CSR does not spend the token
        if not await store.spend_token(secret, time.time()):
            raise PermissionDenied("the join token was already used; create a new one with zc-ctl token create")
        return issued
