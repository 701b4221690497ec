"""The web view's HTTP server: aiohttp on the controller's own event loop, read-only.

Serves four fixed files from the package (the page, its script, its style sheet, an icon) and one JSON
document, ``/api/state?page=N`` (``state.StateBuilder``), which the page fetches every second and tests read.
The document is built on the loop's thread (the engine has no locks) at most once a second per page, however
many browsers poll. GET and HEAD only: any other method is 405, and nothing on this port changes anything.

TLS uses the gRPC port's material (the controller's certificate, the cluster CA), picked up again when it is
reloaded. ``http_client_cert = required`` asks browsers for a certificate of the cluster CA and lets in only
operators (any role) whose certificate is not revoked; ``optional`` asks for none and is allowed on loopback
only (``core.config.check_http``). Every response carries a Content-Security-Policy of 'self' only.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import ssl
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from urllib.parse import urlsplit

from aiohttp import web

from zcrepl.controller.engine import Engine
from zcrepl.controller.web.state import StateBuilder
from zcrepl.core.config import split_address
from zcrepl.core.identity import Identity
from zcrepl.core.logs import kv
from zcrepl.core.trust import Material, Trust

log = logging.getLogger(__name__)

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Resource-Policy": "same-origin",
}
FILES = {  # URL path -> (file in static/, content type)
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
    "/favicon.svg": ("favicon.svg", "image/svg+xml"),
}
CACHE_SECONDS = 1.0
MAX_PAGE = 100_000
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _static() -> dict[str, tuple[bytes, str]]:
    root = resources.files("zcrepl.controller.web") / "static"
    return {path: ((root / name).read_bytes(), ctype) for path, (name, ctype) in FILES.items()}


class WebServer:
    def __init__(self, listen: str, engine: Engine, trust: Trust | None, client_cert: str = "optional",
                 leader: Callable[[], str] = lambda: "", me: Callable[[], str] = lambda: "") -> None:
        self.listen = listen
        self.trust = trust
        self.client_cert = client_cert
        self.address = ""
        self.scheme = "https" if trust is not None else "http"
        self.builder = StateBuilder(engine, leader, me)
        self._files = _static()
        self._cache: dict[int, tuple[float, bytes]] = {}
        self._contexts: dict[int, ssl.SSLContext] = {}
        self._identities: dict[bytes, Identity | None] = {}
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.address}/" if self.address else ""

    async def start(self) -> WebServer:
        app = web.Application(middlewares=[self._guard])
        for path in FILES:
            app.router.add_get(path, self._file)
        app.router.add_get("/api/state", self._state)
        # No access log: every open page polls once a second.
        # Requests are short (one JSON document): the controller's stop need not wait long for them.
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await self._runner.setup()
        host, port = split_address(self.listen)
        site = web.TCPSite(self._runner, host, port, ssl_context=self._base_context(), reuse_address=True)
        try:
            await site.start()
        except OSError as err:
            await self._runner.cleanup()
            self._runner = None
            raise OSError(f"cannot serve the web view on {self.listen}: {err.strerror or err}; choose another "
                          "http_listen address (--http-listen HOST:PORT)") from err
        bound = self._runner.addresses[0][1]
        self.address = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
        log.info("web view serving", extra=kv(url=self.url, client_cert=self.client_cert if self.trust else "-"))
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- TLS ----------------------------------------------------------------------------------------
    def _base_context(self) -> ssl.SSLContext | None:
        if self.trust is None:
            return None
        ctx = self._context(self.trust.material)
        # Each handshake takes the context of the material in force now: renewed certificates and a new CA
        # apply to new connections without a restart, as on the gRPC port. (OpenSSL calls this for every
        # ClientHello, with or without a server name.)
        ctx.sni_callback = self._pick_context
        return ctx

    def _pick_context(self, sock: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        # No refresh here: the daemon's own refresh (every second, SIGHUP) must see each change, since it is
        # what closes revoked agents' sessions.
        assert self.trust is not None
        generation = self.trust.generation
        ctx = self._contexts.get(generation)
        if ctx is None:
            self._contexts = {generation: self._context(self.trust.material)}
            ctx = self._contexts[generation]
        sock.context = ctx

    def _context(self, material: Material) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_verify_locations(cadata=material.ca_pem.decode())
        ctx.verify_mode = ssl.CERT_REQUIRED if self.client_cert == "required" else ssl.CERT_OPTIONAL
        # The key never touches the disk: ssl loads PEM only from paths, so give it an anonymous memory file.
        fd = os.memfd_create("zc-web-tls", os.MFD_CLOEXEC)
        try:
            os.write(fd, material.cert_pem + b"\n" + material.key_pem)
            ctx.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return ctx

    # -- requests -----------------------------------------------------------------------------------
    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        denied = self._denied(request)
        if denied:
            resp: web.StreamResponse = web.Response(status=403, text=denied + "\n")
        else:
            try:
                resp = await handler(request)
            except web.HTTPException as err:
                resp = web.Response(status=err.status, text=f"{err.reason}: this view serves GET / and "
                                    "GET /api/state only\n", headers={"Allow": "GET, HEAD"})
        resp.headers.update(HEADERS)
        return resp

    def _denied(self, request: web.Request) -> str:
        """Why this request may not see the view ("" when it may)."""
        if self.trust is None:
            # Plain HTTP (an insecure controller): a page of another site that rebinds its name to this address
            # must not read the view, so only addresses and localhost are accepted as the Host.
            try:
                host = urlsplit("//" + request.host).hostname or ""
            except ValueError:
                host = ""
            return "" if _literal_host(host) else (f"Host {request.host[:80]!r} refused: open the view by "
                                                   "address (http://127.0.0.1:PORT/)")
        if self.client_cert != "required":
            return ""
        ssl_obj = request.transport.get_extra_info("ssl_object") if request.transport else None
        der = ssl_obj.getpeercert(binary_form=True) if ssl_obj is not None else None
        ident = self._identity(der) if der else None
        if ident is None or ident.kind != "operator":
            return ("this web view needs an operator certificate of the cluster (any role) in the browser: "
                    "zc-ctl pki issue DIR --operator NAME --role read makes one (README, \"Web view\")")
        if ident.serial in self.trust.material.revoked:
            return f"the certificate of {ident} is revoked; ask an admin for a new one"
        return ""

    def _identity(self, der: bytes) -> Identity | None:
        if der not in self._identities:
            from cryptography import x509

            from zcrepl.core import pki

            try:
                ident = pki.identity_of(x509.load_der_x509_certificate(der))
            except ValueError:
                ident = None
            if len(self._identities) > 4096:
                self._identities.clear()
            self._identities[der] = ident
        return self._identities[der]

    async def _file(self, request: web.Request) -> web.StreamResponse:
        body, ctype = self._files[request.path]
        return web.Response(body=body, headers={"Content-Type": ctype, "Cache-Control": "no-cache"})

    async def _state(self, request: web.Request) -> web.StreamResponse:
        raw = request.query.get("page", "0")
        if not raw.isdigit() or int(raw) > MAX_PAGE:
            return web.Response(status=400, text=f"page {raw[:20]!r}: give a page number from 0\n")
        page = int(raw)
        now = time.monotonic()
        hit = self._cache.get(page)
        if hit is None or now - hit[0] >= CACHE_SECONDS:
            self._cache = {p: v for p, v in self._cache.items() if now - v[0] < CACHE_SECONDS}
            doc = await self.builder.build(page)
            hit = self._cache[page] = (now, json.dumps(doc, separators=(",", ":")).encode())
        return web.Response(body=hit[1], headers={"Content-Type": "application/json", "Cache-Control": "no-store"})


def _literal_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
