"""The agent's Prometheus metrics: one registry, read at scrape time from state the agent already keeps.

Every health figure the agent reports to the controller (so the reasons a job waits are visible without a
node_exporter), bytes and files moved, active transfers and data-port connections, watch events and
coalesced change sets, inotify watches, and failed transfers per error kind. Nothing is counted twice: the
collector reads the health monitor's latest sample and the counters the transfers and watch rules keep.

Labels are fixed words, device and interface names, and the export's position in the agent's configuration
(``export="0"``); never paths or file names.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from zcrepl.agent.attempts import Attempts
from zcrepl.agent.health import HealthMonitor
from zcrepl.agent.transfer.server import DataServer
from zcrepl.agent.watchrules import WatchRules
from zcrepl.core.errorkind import ERROR_KINDS
from zcrepl.core.types import HostHealth, Role

P = "zcrepl_agent_"

# (HostHealth field, metric name, help, scale to base units)
_SCALARS: tuple[tuple[str, str, str, float], ...] = (
    ("cpu_percent", "cpu_utilization_ratio", "Host CPU busy, 0 to 1", 0.01),
    ("cpu_count", "cpu_cores", "Logical CPUs of the host", 1),
    ("load1", "load1", "Host load average over 1 minute", 1),
    ("load5", "load5", "Host load average over 5 minutes", 1),
    ("load15", "load15", "Host load average over 15 minutes", 1),
    ("mem_total", "memory_total_bytes", "Host memory", 1),
    ("mem_available", "memory_available_bytes", "Host memory available without swapping", 1),
    ("swap_in_bps", "swap_in_bytes_per_second", "Host swap-in rate", 1),
    ("swap_out_bps", "swap_out_bytes_per_second", "Host swap-out rate", 1),
    ("disk_read_bps", "disk_read_bytes_per_second", "Host disk read rate, all disks", 1),
    ("disk_write_bps", "disk_write_bytes_per_second", "Host disk write rate, all disks", 1),
    ("net_recv_bps", "network_receive_bytes_per_second", "Host network receive rate, all interfaces", 1),
    ("net_sent_bps", "network_transmit_bytes_per_second", "Host network transmit rate, all interfaces", 1),
    ("open_fds", "open_fds", "File descriptors the agent has open", 1),
    ("agent_cpu_percent", "process_cpu_utilization_ratio", "CPU the agent process uses, in cores", 0.01),
    ("agent_rss", "process_resident_memory_bytes", "Resident memory of the agent process", 1),
    ("transfer_bps", "transfer_bytes_per_second", "File bytes per second moved by the agent's transfers", 1),
    ("inotify_watches_used", "inotify_watches", "Inotify watches in use by the agent's user", 1),
    ("inotify_watches_max", "inotify_watches_limit", "The kernel's per-user inotify watch limit", 1),
)


class AgentMetrics(Collector):
    def __init__(self, name: str, version: str, monitor: HealthMonitor, transfers: Attempts, watch_rules: WatchRules,
                 data: DataServer) -> None:
        self.name, self.version = name, version
        self.monitor, self.transfers, self.watch_rules, self.data = monitor, transfers, watch_rules, data
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def describe(self) -> Iterable[Metric]:
        return []  # read live; nothing to check against other collectors (this registry has no others)

    def collect(self) -> Iterable[Metric]:
        info = InfoMetricFamily(P[:-1], "This agent", value={"name": self.name, "version": self.version})
        return [info, *self._health(self.monitor.latest), *self._work()]

    def _health(self, h: HostHealth) -> list[Metric]:
        out: list[Metric] = [GaugeMetricFamily(P + "health_sample_timestamp_seconds",
                                               "When the latest health sample was taken (Unix time)",
                                               value=h.sampled_at)]
        out += [GaugeMetricFamily(P + name, doc, value=getattr(h, field) * scale)
                for field, name, doc, scale in _SCALARS]
        cores = GaugeMetricFamily(P + "cpu_core_utilization_ratio", "CPU busy per core, 0 to 1", labels=["core"])
        for i, pct in enumerate(h.cpu_per_core):
            cores.add_metric([str(i)], pct / 100)
        labels = ["export", "device"]
        size = GaugeMetricFamily(P + "export_size_bytes", "Size of the filesystem holding each export",
                                 labels=labels)
        free = GaugeMetricFamily(P + "export_free_bytes", "Free space on the filesystem holding each export",
                                 labels=labels)
        for i, e in enumerate(h.exports):
            size.add_metric([str(i), e.device], e.total)
            free.add_metric([str(i), e.device], e.free)
        rd = GaugeMetricFamily(P + "disk_device_read_bytes_per_second", "Read rate per disk", labels=["device"])
        wr = GaugeMetricFamily(P + "disk_device_write_bytes_per_second", "Write rate per disk", labels=["device"])
        busy = GaugeMetricFamily(P + "disk_device_busy_ratio", "Time the disk was busy, 0 to 1", labels=["device"])
        for d in h.disks:
            rd.add_metric([d.device], d.read_bps)
            wr.add_metric([d.device], d.write_bps)
            busy.add_metric([d.device], d.busy_percent / 100)
        nic = ["interface"]
        rx = GaugeMetricFamily(P + "nic_receive_bytes_per_second", "Receive rate per interface", labels=nic)
        tx = GaugeMetricFamily(P + "nic_transmit_bytes_per_second", "Transmit rate per interface", labels=nic)
        speed = GaugeMetricFamily(P + "nic_speed_bytes_per_second", "Link speed per interface (0 = unknown)",
                                  labels=nic)
        for n in h.nics:
            rx.add_metric([n.interface], n.recv_bps)
            tx.add_metric([n.interface], n.sent_bps)
            speed.add_metric([n.interface], n.speed_mbps * 125_000)  # Mb/s to bytes/s
        return [*out, cores, size, free, rd, wr, busy, rx, tx, speed]

    def _work(self) -> list[Metric]:
        totals = self.transfers.totals()
        way = {Role.SENDER: "sent", Role.RECEIVER: "received"}
        moved = CounterMetricFamily(P + "transferred_bytes", "File bytes moved by jobs, per direction",
                                    labels=["direction"])
        files = CounterMetricFamily(P + "transferred_files", "Files moved by jobs (received: files written here)",
                                    labels=["direction"])
        for role, (nbytes, nfiles) in totals.items():
            moved.add_metric([way[role]], nbytes)
            files.add_metric([way[role]], nfiles)
        active = GaugeMetricFamily(P + "active_transfers", "Job transfers running on this agent")
        active.add_metric([], self.transfers.count())
        admitted, pending = self.data.connections()
        conns = GaugeMetricFamily(P + "data_connections",
                                  "Open data-port connections (control and data streams), by whether they showed a "
                                  "valid ticket", labels=["state"])
        conns.add_metric(["admitted"], admitted)
        conns.add_metric(["pending"], pending)
        errors_by_kind = self.transfers.error_counts()
        errors = CounterMetricFamily(P + "transfer_errors", "Failed job transfers, per error kind", labels=["kind"])
        for kind in ERROR_KINDS:
            errors.add_metric([kind], errors_by_kind.get(kind, 0))
        events, sets = self.watch_rules.watch_counts()
        shipped = CounterMetricFamily(P + "watch_transferred_bytes", "File bytes shipped by watch rules",
                                      value=self.watch_rules.bytes_moved())
        rules = GaugeMetricFamily(P + "watch_rules", "Watch rules this agent is the source of",
                                  value=len(self.watch_rules.statuses()))
        return [moved, files, active, conns, errors,
                CounterMetricFamily(P + "watch_events", "File system events seen by the watchers", value=events),
                CounterMetricFamily(P + "watch_change_sets", "Coalesced change sets released for shipping",
                                    value=sets),
                shipped, rules]
