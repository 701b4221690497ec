"""The zc-controller daemon: store, engine, scheduler loop and the gRPC server on one event loop.

``with Controller(config) as c:`` runs the loop in a background thread (port 0 allowed; the bound
address is ``c.address``) and stops it cleanly on exit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from types import TracebackType

import grpc

from zcrepl.controller.engine import Engine
from zcrepl.controller.service import SERVICE_NAME, ControllerService
from zcrepl.controller.store import Store
from zcrepl.core.config import ControllerConfig, split_address
from zcrepl.core.logs import kv
from zcrepl.core.readyfile import write_ready_file
from zcrepl.proto import controller_pb2_grpc
from zcrepl.proto.channels import KEEPALIVE_SERVER, add_health_and_reflection_aio, bind
from zcrepl.proto.errors import ErrorInterceptor

log = logging.getLogger(__name__)


class Controller:
    def __init__(self, config: ControllerConfig) -> None:
        self.config = config
        self.address = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="zc-controller-loop", daemon=True)
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None

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
        store = Store(cfg.state_dir)
        server: grpc.aio.Server | None = None
        scheduler: asyncio.Task[None] | None = None
        engine: Engine | None = None
        try:
            engine = Engine(cfg, store)
            server = grpc.aio.server(interceptors=[ErrorInterceptor()], options=KEEPALIVE_SERVER)
            controller_pb2_grpc.add_ControllerServicer_to_server(ControllerService(engine), server)
            await add_health_and_reflection_aio(server, [SERVICE_NAME])
            host, _ = split_address(cfg.listen)
            port = bind(server, cfg.listen)
            self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            await server.start()
            scheduler = asyncio.create_task(engine.run_forever())
            log.info("controller serving", extra=kv(address=self.address, state=store.path))
            if cfg.ready_file:
                write_ready_file(cfg.ready_file, {"pid": os.getpid(), "grpc": self.address})
            self._started.set()
            await self._stop.wait()
            log.info("controller stopping", extra=kv(address=self.address))
        finally:
            if engine is not None:
                engine.stopping = True
                engine.close_sessions()  # lets every Connect handler return on its own before the stop
            if scheduler is not None:
                scheduler.cancel()
            if server is not None:
                await server.stop(grace=2)
            store.close()
