"""The zc-controller daemon: store, engine, scheduler loop and the gRPC server on one event loop.

``with Controller(config) as c:`` runs the loop in a background thread (port 0 allowed; the bound
address is ``c.address``) and stops it cleanly on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING

import grpc

from zcrepl.controller.authority import Authority, authority_from_config
from zcrepl.controller.engine import Engine
from zcrepl.controller.leadership import Leadership, PgLease, claim
from zcrepl.controller.metrics import ControllerMetrics
from zcrepl.controller.pki_store import PkiStore
from zcrepl.controller.security import EnrollmentService, SecurityService
from zcrepl.controller.service import SERVICE_NAME, ControllerService
from zcrepl.controller.store import Store, is_postgres, open_store
from zcrepl.core.config import ControllerConfig, split_address
from zcrepl.core.logs import kv
from zcrepl.core.metricsserver import MetricsServer
from zcrepl.core.readyfile import write_ready_file
from zcrepl.proto import controller_pb2_grpc, security_pb2, security_pb2_grpc
from zcrepl.proto.auth import AuthInterceptor
from zcrepl.proto.channels import KEEPALIVE_SERVER, add_health_and_reflection_aio, bind, enroll_credentials
from zcrepl.proto.healthport import HealthPort
from zcrepl.proto.servererrors import ErrorInterceptor

if TYPE_CHECKING:
    from zcrepl.controller.web.server import WebServer

log = logging.getLogger(__name__)


@dataclass
class _Parts:
    """What one run of the controller started, so the shutdown stops exactly that."""

    store: Store
    engine: Engine | None = None
    service: ControllerService | None = None
    server: grpc.aio.Server | None = None
    enroll: grpc.aio.Server | None = None
    metrics: MetricsServer | None = None
    webview: WebServer | None = None
    health: HealthPort | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class Controller:
    def __init__(self, config: ControllerConfig) -> None:
        self.config = config
        self.address = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="zc-controller-loop", daemon=True)
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._engine: Engine | None = None
        self._stop: asyncio.Event | None = None
        self.authority: Authority | None = None
        self.enroll_address = ""
        self.metrics_address = ""
        self.http_address = ""
        self.http_url = ""
        self.health_address = ""
        self._trust_generation = 0
        self.leadership: Leadership | None = None  # several controllers on one PostgreSQL store

    def start(self) -> Controller:
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error
        return self

    def stop(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)

    def reload(self) -> None:
        """SIGHUP: re-read the TLS files now (they are also picked up within a second of changing)."""
        if self.authority is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._reload_trust, True)

    def _reload_trust(self, force: bool = False) -> None:
        # Whoever reloads the files first (this check, or a call's revocation check in the interceptor), the
        # sessions of newly revoked agents close here: judged by the material's generation, not by who reloaded.
        if self.authority is None or self._engine is None:
            return
        trust = self.authority.trust
        trust.refresh(force)
        if trust.generation != self._trust_generation:
            self._trust_generation = trust.generation
            self._engine.drop_revoked(trust.material.revoked)

    def __enter__(self) -> Controller:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as err:  # surfaced to start() when it happens during startup
            if not self._started.is_set():
                self._error = err
            else:
                log.exception("controller loop crashed")
        finally:
            self._started.set()
            self._loop.close()

    async def _main(self) -> None:
        cfg = self.config
        self._stop = asyncio.Event()
        self._secure()
        # Off the loop: opening runs the schema migrations and may wait for a PostgreSQL server.
        store = await asyncio.to_thread(open_store, cfg.store, cfg.state_dir)
        parts = _Parts(store)
        try:
            engine = await self._build_engine(parts)
            names = await self._start_grpc(parts, engine)
            await self._start_side_ports(parts, engine, names)
            self._start_tasks(parts, engine)
            self._announce(store)
            self._started.set()
            await self._stop.wait()
            log.info("controller stopping", extra=kv(address=self.address))
        finally:
            await self._shutdown(parts)

    def _secure(self) -> None:
        cfg = self.config
        self.authority = authority = authority_from_config(cfg)
        if authority is not None:
            self._trust_generation = authority.trust.generation
        else:
            log.warning("INSECURE: TLS is off; anyone who can reach this port can read and overwrite every "
                        "agent's exports (use --auto-pki or --ca/--cert/--key)", extra=kv(listen=cfg.listen))

    async def _build_engine(self, parts: _Parts) -> Engine:
        cfg, store = self.config, parts.store
        shared = is_postgres(cfg.store)
        # Reads the state it resumes; on PostgreSQL only once it holds the lease (leadership.py).
        self._engine = parts.engine = engine = await asyncio.to_thread(Engine, cfg, store, lead=not shared)
        if not shared:  # the only controller of its store: it leads, under a new epoch at each start
            engine.epoch, engine.store_id = await store.call(claim, store.db.execute, "")
        if cfg.metrics_listen:
            engine.observe = observer = ControllerMetrics(engine, store, asyncio.get_running_loop())
            parts.metrics = MetricsServer(cfg.metrics_listen, observer.registry).start()
            self.metrics_address = parts.metrics.address
        return engine

    async def _start_grpc(self, parts: _Parts, engine: Engine) -> list[str]:
        """The main port (and the enrolment port when this controller signs); returns the service names."""
        cfg, authority = self.config, self.authority
        interceptors: list[grpc.aio.ServerInterceptor] = [ErrorInterceptor()]
        if authority is not None:
            interceptors.insert(0, AuthInterceptor(authority.trust))
        parts.server = server = grpc.aio.server(interceptors=interceptors, options=KEEPALIVE_SERVER)
        parts.service = service = ControllerService(
            engine, leader=lambda: self.leadership.leader if self.leadership else "", me=lambda: self.advertised)
        controller_pb2_grpc.add_ControllerServicer_to_server(service, server)
        names = [SERVICE_NAME]
        if authority is not None:
            security = SecurityService(authority, PkiStore(parts.store), cfg, lambda: self._enroll_port(),
                                       lambda: self._reload_trust(True))
            security_pb2_grpc.add_SecurityServicer_to_server(security, server)
            names.append(security_pb2.DESCRIPTOR.services_by_name["Security"].full_name)
            if authority.can_sign():
                parts.enroll = grpc.aio.server(interceptors=[ErrorInterceptor()], options=KEEPALIVE_SERVER)
                security_pb2_grpc.add_EnrollmentServicer_to_server(EnrollmentService(security), parts.enroll)
        await add_health_and_reflection_aio(server, names)
        self.address = self._bind(server, cfg.listen, authority)
        await server.start()
        if parts.enroll is not None and authority is not None:
            await self._start_enroll(parts.enroll, authority)
        return names

    async def _start_enroll(self, enroll: grpc.aio.Server, authority: Authority) -> None:
        listen = self.config.enroll_listen
        host, _ = split_address(listen)
        port = enroll.add_secure_port(listen, enroll_credentials(authority.trust))
        if port == 0:
            raise OSError(f"cannot listen on {listen} for enrolment: the address is in use")
        self.enroll_address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        await enroll.start()

    async def _start_side_ports(self, parts: _Parts, engine: Engine, names: list[str]) -> None:
        """The web view and the plain health port, each only when configured."""
        cfg, authority = self.config, self.authority
        if cfg.http_listen:
            from zcrepl.controller.web.server import WebServer  # aiohttp only when the view is on

            assert parts.service is not None  # the gRPC port, started first, made it
            parts.webview = webview = WebServer(cfg.http_listen, engine, authority.trust if authority else None,
                                                cfg.http_client_cert, parts.service.leader, parts.service.me)
            await webview.start()
            self.http_address, self.http_url = webview.address, webview.url
        if cfg.health_listen:
            parts.health = HealthPort(names)
            self.health_address = await parts.health.start(cfg.health_listen)

    def _start_tasks(self, parts: _Parts, engine: Engine) -> None:
        """The scheduler loop, the lease (on a shared store) and the TLS file watch."""
        cfg = self.config
        parts.tasks.append(asyncio.create_task(engine.run_forever()))
        if engine.leading:  # on PostgreSQL the lease decides: Engine.lead starts them, step_down stops them
            engine.schedules.start()  # fires what fell due while down, then sleeps till the next is due
        if is_postgres(cfg.store):
            self.leadership = Leadership(
                PgLease(cfg.store, self.advertised, cfg.lease_timeout), self.advertised, renew=cfg.lease_renew,
                timeout=cfg.lease_timeout, poll=cfg.lease_poll, on_elected=engine.lead,
                on_deposed=lambda _why: _async(engine.step_down))
            parts.tasks.append(asyncio.create_task(self.leadership.run()))
            if isinstance(engine.observe, ControllerMetrics):
                lease = self.leadership
                engine.observe.store_reachable = lambda: lease.reachable
        if self.authority is not None:
            parts.tasks.append(asyncio.create_task(self._watch_trust()))

    def _announce(self, store: Store) -> None:
        """The serving log line and, when asked, the ready file with every bound address."""
        log.info("controller serving", extra=kv(address=self.address, state=store.path,
                                                tls="off" if self.authority is None else "mutual",
                                                enroll=self.enroll_address or "-",
                                                metrics=self.metrics_address or "-",
                                                web=self.http_url or "-",
                                                health=self.health_address or "-"))
        if not self.config.ready_file:
            return
        ready = {"pid": os.getpid(), "grpc": self.address}
        optional = {"enroll": self.enroll_address, "metrics": self.metrics_address, "http": self.http_address,
                    "http_url": self.http_address and self.http_url, "health": self.health_address}
        ready.update((key, value) for key, value in optional.items() if value)
        write_ready_file(self.config.ready_file, ready)

    async def _shutdown(self, parts: _Parts) -> None:
        """Stops what started, in the order that loses nothing: probes, sessions, lease, ports, store."""
        if parts.health is not None:
            await parts.health.stop()  # probes see the stop before the main port closes
        if parts.engine is not None:
            parts.engine.stopping = True
            parts.engine.close_sessions()  # lets every Connect handler return on its own before the stop
            parts.engine.schedules.stop()
        for t in parts.tasks:
            t.cancel()
        if self.leadership is not None:
            await self._resign(parts.store, self.leadership)
        if parts.webview is not None:
            await parts.webview.stop()
        if parts.server is not None:
            await parts.server.stop(grace=2)
        if parts.enroll is not None:
            await parts.enroll.stop(grace=1)
        if parts.metrics is not None:
            # Off the loop: shutdown() waits for a scrape in flight, which may be waiting for the loop.
            await asyncio.to_thread(parts.metrics.stop)
        await asyncio.to_thread(parts.store.close)  # commits what is queued

    @staticmethod
    async def _resign(store: Store, leadership: Leadership) -> None:
        if leadership.leading:
            # Our last writes go in before the lease goes: the next leader reads them.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(store.flush(), 5)
        await asyncio.to_thread(leadership.close)  # the lease goes now: a follower takes over at once

    @property
    def advertised(self) -> str:
        """Where agents and zc-ctl reach this controller: ``advertise``, else the bound address."""
        return self.config.advertise or self.address

    def _enroll_port(self) -> int:
        return split_address(self.enroll_address)[1] if self.enroll_address else 0

    @staticmethod
    def _bind(server: grpc.aio.Server, listen: str, authority: Authority | None) -> str:
        host, _ = split_address(listen)
        port = bind(server, listen, authority.trust if authority else None)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def _watch_trust(self) -> None:
        """Pick up renewed or replaced TLS files and new revocations within a second (SIGHUP: at once)."""
        while True:
            await asyncio.sleep(1.0)
            self._reload_trust()


async def _async(fn: Callable[[], None]) -> None:
    fn()
