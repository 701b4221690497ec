"""The policy tests' shared pieces (tests/unit/test_policy_*.py): a clock, default thresholds, a host's health
sample and an endpoint."""

from __future__ import annotations

from zcrepl.controller.policy import Thresholds
from zcrepl.core.types import DiskIO, DiskUsage, Endpoint, HostHealth, NetIO

NOW = 10_000.0
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
T = Thresholds()


def hh(cpu: float = 10.0, load: float = 0.5, cores: int = 8, disk: float = 10.0, tx_mbps: float = 0.0,
       rx_mbps: float = 0.0, speed: int = 1000, free: int = 500 * GiB, total: int = 1000 * GiB,
       at: float = NOW, exports: tuple[DiskUsage, ...] | None = None) -> HostHealth:
    """A host sample; network figures in Mb/s of the single eth0 NIC, plus an idle lo with unknown speed."""
    if exports is None:
        exports = (DiskUsage(b"/srv", total, total - free, free, 100 * (total - free) / total),)
    return HostHealth(
        sampled_at=at, cpu_percent=cpu, cpu_count=cores, load1=load, exports=exports,
        disks=(DiskIO("sda", 0, 0, disk / 2), DiskIO("sdb", 0, 0, disk)),
        nics=(NetIO("lo", 9e9, 9e9, 0), NetIO("eth0", rx_mbps * 1e6 / 8, tx_mbps * 1e6 / 8, speed)),
    )


def ep(host: str) -> Endpoint:
    return Endpoint(host, b"/srv/d")
