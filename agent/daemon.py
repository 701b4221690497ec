"""The zc-agent daemon: exports, data port, health, gRPC API and the controller link, as one unit.

``with Agent(config) as agent:`` starts everything (ports may be 0) and stops it in reverse order.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from types import TracebackType

from zcrepl.agent import priority
from zcrepl.agent.api import AgentService, ApiServer
from zcrepl.agent.attempts import Attempts
from zcrepl.agent.exports import Exports
from zcrepl.agent.health import HealthMonitor, HealthSampler
from zcrepl.agent.identity import Renewer, agent_trust, enrolled_paths
from zcrepl.agent.link import ControllerLink
from zcrepl.agent.metrics import AgentMetrics
from zcrepl.agent.priority import TransferPriority
from zcrepl.agent.snapshot_list import list_snapshots
from zcrepl.agent.transfer.compress import measure_rate
from zcrepl.agent.transfer.leftovers import Sweeper
from zcrepl.agent.transfer.limits import SessionLimits
from zcrepl.agent.transfer.server import DataServer, TicketBook
from zcrepl.agent.transfer.tls import TlsContexts
from zcrepl.agent.watchrules import WatchRules
from zcrepl.core.config import AgentConfig, controller_list, split_address
from zcrepl.core.logs import kv
from zcrepl.core.metricsserver import MetricsServer
from zcrepl.core.readyfile import write_ready_file
from zcrepl.core.types import AgentInfo, HostHealth, TransferReport
from zcrepl.core.version import VERSION

log = logging.getLogger(__name__)
_WILDCARD = ("", "0.0.0.0", "::")


def local_address_towards(target: str) -> str:
    """The local IP this host would use to reach ``target`` (no packet is sent: UDP connect)."""
    host, port = split_address(target)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.connect((host, port or 9))
            return str(s.getsockname()[0])
        except OSError:
            return "127.0.0.1"


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.exports = Exports(config.name, config.exports, config.export_policy)
        self.tickets = TicketBook()
        self.data: DataServer | None = None
        self.transfers: Attempts | None = None
        self.watch_rules: WatchRules | None = None
        self.monitor: HealthMonitor | None = None
        self.sweeper: Sweeper | None = None
        self.link: ControllerLink | None = None
        self.grpc_address = ""
        self.data_address = ""
        self.metrics: MetricsServer | None = None
        self.metrics_address = ""
        self.health_address = ""
        self.trust = agent_trust(config)  # enrols first when started with a join token
        if self.trust is None:
            log.warning("INSECURE: TLS is off; the controller and the agent's API are reached in plaintext and "
                        "without authentication (use --join TOKEN or --ca/--cert/--key)", extra=kv(name=config.name))
        self._api = ApiServer(AgentService(self.health, self.info,
                                           lambda path: list_snapshots(self.exports, config.name, path)), self.trust)
        self.renewer: Renewer | None = None
        # Once, at start-up, beside the rest of it (tens of ms): the controller's compress = auto weighs it
        # against links. info() waits for it, so the registration always carries it.
        self.compress_bps = 0
        self._rate = threading.Thread(target=self._measure_compress, name="zc-compress-rate", daemon=True)
        self._rate.start()

    def _measure_compress(self) -> None:
        self.compress_bps = measure_rate()

    def _advertise(self, host: str, port: int) -> str:
        if host in _WILDCARD:
            host = self.config.advertise_host or local_address_towards(controller_list(self.config.controller)[0])
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def info(self) -> AgentInfo:
        self._rate.join()
        return AgentInfo(
            name=self.config.name, grpc_address=self.grpc_address, data_address=self.data_address,
            exports=self.exports.paths, version=VERSION, pid=os.getpid(), hostname=socket.gethostname(),
            site=self.config.site, source_addresses=self.config.source_addresses, compress_bps=self.compress_bps,
        )

    def health(self) -> HostHealth:
        assert self.monitor is not None
        return self.monitor.latest

    def start(self) -> Agent:
        cfg = self.config
        priority.configure(TransferPriority(cfg.transfer_nice, cfg.transfer_ioclass, cfg.transfer_iolevel))
        try:
            dhost, dport = split_address(cfg.data_listen)
            self.data = DataServer(dhost, dport, self.tickets, cfg,
                                   tls_contexts=TlsContexts(self.trust) if self.trust is not None else None)
            self.data_address = self._advertise(dhost, self.data.address[1])
            limits = SessionLimits.from_config(cfg)
            self.sweeper = Sweeper(cfg.name, max_age=cfg.partial_max_age, max_bytes=cfg.partial_max_bytes,
                                   state_file=os.path.join(cfg.state_dir, "recent-destinations.json"))
            self.sweeper.startup([root for _, _, root in self.exports.roots])
            self.transfers = Attempts(cfg.name, self.exports, self.data, self.tickets, self._report, limits=limits,
                                      sweeper=self.sweeper)
            self.watch_rules = WatchRules(cfg.name, self.exports, self.data, self.tickets, limits=limits,
                                          sweeper=self.sweeper)
            transfers, watch_rules = self.transfers, self.watch_rules
            sampler = HealthSampler(self.exports.paths, active_transfers=self.transfers.count,
                                    transfer_bytes=lambda: transfers.bytes_moved() + watch_rules.bytes_moved(),
                                    data_host=split_address(self.data_address)[0])
            self.monitor = HealthMonitor(sampler, cfg.heartbeat_interval)
            self.monitor.start()
            ghost, _ = split_address(cfg.listen)
            gport = self._api.start(cfg.listen, cfg.health_listen)
            self.health_address = self._api.health_address
            self.grpc_address = self._advertise(ghost, gport)
            self.data.start()
            if cfg.metrics_listen:
                registry = AgentMetrics(cfg.name, VERSION, self.monitor, transfers, watch_rules, self.data).registry
                self.metrics = MetricsServer(cfg.metrics_listen, registry).start()
                self.metrics_address = self.metrics.address
            self.link = ControllerLink(
                cfg.controller, self.info, self.health, self.transfers,
                heartbeat_interval=cfg.heartbeat_interval, reconnect_max=cfg.reconnect_max,
                on_interval=self.monitor.set_interval, on_beat=self.tickets.expire, watch_rules=self.watch_rules,
                trust=self.trust,
            )
            self.link.start()
            if self.trust is not None and self.trust.paths == enrolled_paths(cfg):
                self.renewer = Renewer(self.trust, cfg.controller)
                self.renewer.start()
        except BaseException:
            self.stop()
            raise
        log.info("agent serving", extra=kv(name=cfg.name, grpc=self.grpc_address, data=self.data_address,
                                           controller=cfg.controller, exports=b",".join(self.exports.paths),
                                           metrics=self.metrics_address or "-",
                                           health=self.health_address or "-"))
        if cfg.ready_file:
            ready = {"name": cfg.name, "pid": os.getpid(), "grpc": self.grpc_address, "data": self.data_address}
            if self.metrics_address:
                ready["metrics"] = self.metrics_address
            if self.health_address:
                ready["health"] = self.health_address
            write_ready_file(cfg.ready_file, ready)
        return self

    def _report(self, r: TransferReport) -> None:
        if self.link is not None:
            self.link.report(r)

    def reload(self) -> None:
        """SIGHUP: re-read the TLS files now (they are also picked up within a second of changing)."""
        if self.trust is not None:
            self.trust.refresh(force=True)

    def stop(self) -> None:
        self._api.stop_health()
        if self.renewer is not None:
            self.renewer.stop()
        if self.transfers is not None:
            self.transfers.cancel_all("agent shutting down")
        if self.watch_rules is not None:
            self.watch_rules.stop_all()
        if self.link is not None:
            self.link.stop()
        if self.data is not None:
            self.data.stop()
        if self.transfers is not None:
            self.transfers.join(5)
        if self.sweeper is not None:
            self.sweeper.stop()
        self._api.stop()
        if self.metrics is not None:
            self.metrics.stop()
        if self.monitor is not None:
            self.monitor.stop()
        self.exports.close()
        log.info("agent stopped", extra=kv(name=self.config.name))

    def __enter__(self) -> Agent:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
