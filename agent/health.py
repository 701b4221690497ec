"""Host health sampling for the agent: one psutil reading turned into a :class:`HostHealth`.

Modelled on dask/distributed's ``system_monitor.py``. :class:`HealthSampler` owns the previous reading of
every cumulative counter (cpu times, swap, disk and NIC bytes) and turns deltas into per-second rates over
its injected monotonic clock. :class:`HealthMonitor` is the thin I/O shell that samples on a thread at the
cadence the controller sets and keeps a short history.

Gotchas:

- Health is best effort. Any psutil source that fails on an odd system (``None`` from
  ``disk_io_counters``, a missing ``/proc`` file, ``PermissionError``, a warning promoted to an error)
  reports zeros and is logged once; :meth:`HealthSampler.sample` never raises because of it.
- Rates cover the time since the *previous* ``sample()`` call, whoever made it. Two callers (the heartbeat
  thread and a ``GetHealth`` handler) shorten each other's windows; prefer serving
  :attr:`HealthMonitor.latest` when a fresh reading is not needed.
- ``disk_usage`` and ``os.stat`` on an export on a hung NFS server block in the kernel, and with them the
  caller of ``sample()``.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

import psutil

from zcrepl.agent.inotify_usage import InotifyUsage
from zcrepl.core.types import DiskIO, DiskUsage, HostHealth, NetIO

__all__ = ["HealthMonitor", "HealthSampler", "counter_rate"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")


def counter_rate(prev: int | None, cur: int, dt: float) -> float:
    """Per-second rate of a monotonically increasing counter read twice, ``dt`` seconds apart.

    Returns 0.0 for the interval instead of a negative or absurd rate when there is no previous reading,
    when ``dt <= 0``, or when ``cur < prev`` (the counter wrapped or was reset: a NIC re-created, a disk
    re-attached, a 32-bit counter wrap).
    """
    if prev is None or dt <= 0 or cur < prev:
        return 0.0
    return (cur - prev) / dt


def _cpu_busy_percent(t1: Any, t2: Any) -> float:
    """Busy share of the CPU between two ``psutil.cpu_times()`` readings, computed as psutil does."""
    if t1 is None or t1._fields != t2._fields:
        return 0.0
    # Times can step back a little on Linux and Windows (psutil issue 392); clamp like psutil does.
    delta = {f: max(0.0, getattr(t2, f) - getattr(t1, f)) for f in t2._fields}
    # guest time is already counted in user/nice, and iowait is idle time Linux does not count as idle.
    total = sum(delta.values()) - delta.get("guest", 0.0) - delta.get("guest_nice", 0.0)
    busy = total - delta["idle"] - delta.get("iowait", 0.0)
    if total <= 0:
        return 0.0
    return round(min(100.0, max(0.0, busy / total * 100.0)), 1)


def _mount_source_rdev(major: int, minor: int) -> int | None:
    """Device number of the block device mounted with anonymous ``major:minor``, from mountinfo."""
    want = f"{major}:{minor}"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                left, sep, right = line.partition(" - ")
                fields = left.split()
                if not sep or len(fields) < 3 or fields[2] != want:
                    continue
                fstype_source = right.split()
                source = fstype_source[1] if len(fstype_source) > 1 else ""
                if not source.startswith("/dev/"):
                    return None
                st = os.stat(source)
                return st.st_rdev if stat.S_ISBLK(st.st_mode) else None
    except OSError:
        return None
    return None


def _block_device_name(st_dev: int) -> str | None:
    """Kernel name of the block device holding a file with this ``st_dev``, as psutil names it, or None."""
    major, minor = os.major(st_dev), os.minor(st_dev)
    if major == 0:
        # Anonymous device: btrfs subvolumes, overlayfs, tmpfs, NFS. For btrfs the mount source is the
        # real disk; for the others there is no single disk and the caller falls back.
        rdev = _mount_source_rdev(major, minor)
        if rdev is None:
            return None
        major, minor = os.major(rdev), os.minor(rdev)
    try:
        target = os.path.realpath(f"/sys/dev/block/{major}:{minor}", strict=True)
    except OSError:
        return None
    # A partition's sysfs node is .../block/sda/sda1, so its basename is already the partition's own name.
    # sysfs spells "/" in a name as "!" (cciss!c0d0); /proc/diskstats, hence psutil, keeps the "/".
    return os.path.basename(target).replace("!", "/")


def _physical_disks(names: Iterable[str]) -> list[str]:
    """Whole physical disks among psutil's device names, or all of them where sysfs can't tell."""
    names = list(names)
    # Only hardware-backed disks have a ``device`` link: this drops loop, zram, dm and md devices (whose
    # bytes also appear on the disks beneath them) and partitions (which are not under /sys/block).
    physical = [n for n in names if os.path.exists(f"/sys/block/{n.replace('/', '!')}/device")]
    return physical or names


@dataclass
class _Counters:
    """Cumulative counters of one reading; the sampler keeps the previous one to compute rates."""

    at: float
    cpu: Any = None
    per_cpu: list[Any] = field(default_factory=list)
    agent_cpu_seconds: float | None = None
    swap_in: int | None = None
    swap_out: int | None = None
    # device -> (read_bytes, write_bytes, busy_time ms or None where the platform lacks it)
    disks: dict[str, tuple[int, int, int | None]] = field(default_factory=dict)
    # interface -> (bytes_recv, bytes_sent)
    nics: dict[str, tuple[int, int]] = field(default_factory=dict)
    transfer_bytes: int | None = None  # file bytes moved by this agent's transfers since it started


class HealthSampler:
    """Turns psutil readings into :class:`HostHealth`; thread-safe.

    ``exports`` are the export roots: each gets a :class:`DiskUsage` naming the block device behind it
    (``device``, as in ``disks``; "" when it cannot be found, e.g. on overlayfs, tmpfs, NFS or ZFS), and
    per-device disk I/O is reported for those devices (all physical disks when an export's device is
    unknown). ``disk_read_bps``/``disk_write_bps`` are the sums over those devices.

    ``transfer_bytes`` returns the file bytes this agent's transfers have moved so far (a counter; its rate
    is ``transfer_bps``), ``inotify`` the watches in use by this user and the per-user limit. ``data_host``
    is the address the agent's data port advertises: the interface holding it is ``data_nic``, the NIC that
    transfers to and from this host use (which NIC serves an export does not exist as such: peers reach
    every export through the data port).

    Network totals include the loopback interface: agents on one test machine talk over ``lo``, and
    excluding it would report an idle network while transfers run. On a real host that means local
    loopback traffic (agent to a co-located controller) is counted too; ``nics`` lists every interface
    so a consumer can exclude ``lo`` itself.

    ``cpu_percent`` and ``agent_cpu_percent`` are computed from cpu-time deltas kept in the sampler
    rather than ``psutil.cpu_percent(interval=None)``: psutil keys that state by calling thread, so
    samples from a gRPC thread pool would each see a different, arbitrary window. ``agent_cpu_percent``
    is in units of one core (a process busy on two cores reads 200).
    """

    def __init__(
        self,
        exports: Sequence[bytes],
        *,
        active_transfers: Callable[[], int] = lambda: 0,
        transfer_bytes: Callable[[], int] = lambda: 0,
        inotify: InotifyUsage | None = None,
        data_host: str = "",
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._exports = tuple(os.fsencode(p) for p in exports)
        self._active_transfers = active_transfers
        self._transfer_bytes = transfer_bytes
        self._inotify = inotify if inotify is not None else InotifyUsage()
        self._data_host = data_host.strip("[]")
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._proc = psutil.Process()
        self._failed: set[str] = set()
        self._dev_names: dict[int, str | None] = {}
        # Prime every counter now so the first sample() reports rates over a real window, not zeros.
        self._prev = self._read_counters()

    @property
    def exports(self) -> tuple[bytes, ...]:
        return self._exports

    def _probe(self, source: str, fn: Callable[[], _T], default: _T) -> _T:
        """``fn()``, or ``default`` if it fails; logs the first failure of each source only."""
        try:
            return fn()
        except Exception as err:  # psutil raises OSError, RuntimeError, psutil.Error, warnings-as-errors...
            if source not in self._failed:
                self._failed.add(source)
                log.warning("health source unavailable source=%s error=%r; reporting zeros", source, err)
            return default

    def _read_counters(self) -> _Counters:
        c = _Counters(at=self._monotonic())
        c.cpu = self._probe("cpu_times", psutil.cpu_times, None)
        c.per_cpu = self._probe("cpu_times_percpu", lambda: list(psutil.cpu_times(percpu=True)), [])
        proc_times = self._probe("agent_cpu_times", self._proc.cpu_times, None)
        if proc_times is not None:
            c.agent_cpu_seconds = proc_times.user + proc_times.system
        swap = self._probe("swap_memory", psutil.swap_memory, None)
        if swap is not None:
            c.swap_in, c.swap_out = swap.sin, swap.sout
        # perdisk=True returns {} (perdisk=False returns None) when the kernel exposes no disk stats.
        disks = self._probe("disk_io_counters", lambda: psutil.disk_io_counters(perdisk=True), None) or {}
        c.disks = {
            name: (d.read_bytes, d.write_bytes, getattr(d, "busy_time", None)) for name, d in disks.items()
        }
        nics = self._probe("net_io_counters", lambda: psutil.net_io_counters(pernic=True), None) or {}
        c.nics = {name: (n.bytes_recv, n.bytes_sent) for name, n in nics.items()}
        c.transfer_bytes = self._probe("transfer_bytes", self._transfer_bytes, None)
        return c

    def _export_devices(self, available: Collection[str]) -> dict[bytes, str | None]:
        """Export root -> the block device behind it (a name in ``available``), None where unknown.

        A vanished export is left out: it does no I/O worth attributing.
        """
        out: dict[bytes, str | None] = {}
        for path in self._exports:
            try:
                st_dev = os.stat(path).st_dev
            except OSError:
                continue
            if st_dev not in self._dev_names:
                self._dev_names[st_dev] = _block_device_name(st_dev)
            name = self._dev_names[st_dev]
            out[path] = name if name is not None and name in available else None
        return out

    def _export_disks(self, available: Collection[str], devices: dict[bytes, str | None]) -> list[str]:
        """The devices behind the exports, or the physical disks if any export's device is unknown."""
        mapped = {name for name in devices.values() if name is not None}
        if None in devices.values() or not mapped:
            # An unmapped export may live on any local disk; physical disks only, so a mapped partition
            # or dm device is not counted a second time through the disk beneath it.
            return sorted(_physical_disks(available))
        return sorted(mapped)

    def _disk_usage(self, path: bytes, device: str | None) -> DiskUsage:
        try:
            u = psutil.disk_usage(path)
        except Exception:  # vanished, unmounted or unreadable: report it as full, i.e. unusable
            return DiskUsage(path=path, total=0, used=0, free=0, percent=100.0)
        return DiskUsage(path=path, total=u.total, used=u.used, free=u.free, percent=float(u.percent),
                         device=device or "")

    def _data_nic(self) -> str:
        """The interface that holds the data address, or "" (no address given, or none holds it)."""
        if not self._data_host:
            return ""
        for name, addrs in psutil.net_if_addrs().items():
            if any(a.address.split("%")[0] == self._data_host for a in addrs):
                return name
        return ""

    def sample(self) -> HostHealth:
        """Read psutil once; rates cover the time since the previous ``sample()`` (or construction)."""
        with self._lock:
            return self._sample_locked()

    def _sample_locked(self) -> HostHealth:
        prev, cur = self._prev, self._read_counters()
        self._prev = cur
        dt = cur.at - prev.at
        devices = self._export_devices(cur.disks)
        disks = _disk_rates(prev, cur, dt, self._export_disks(cur.disks, devices))
        nics = _nic_rates(prev, cur, dt, self._probe("net_if_stats", psutil.net_if_stats, {}))
        facts = self._facts()
        return HostHealth(
            sampled_at=self._clock(),
            cpu_percent=_cpu_busy_percent(prev.cpu, cur.cpu) if cur.cpu is not None else 0.0,
            cpu_per_core=_per_core(prev, cur),
            cpu_count=facts.cpu_count,
            load1=facts.load[0],
            load5=facts.load[1],
            load15=facts.load[2],
            mem_total=facts.mem_total,
            mem_available=facts.mem_available,
            swap_in_bps=counter_rate(prev.swap_in, cur.swap_in, dt) if cur.swap_in is not None else 0.0,
            swap_out_bps=counter_rate(prev.swap_out, cur.swap_out, dt) if cur.swap_out is not None else 0.0,
            exports=tuple(self._disk_usage(p, devices.get(p)) for p in self._exports),
            disk_read_bps=sum(d.read_bps for d in disks),
            disk_write_bps=sum(d.write_bps for d in disks),
            disks=disks,
            net_recv_bps=sum(n.recv_bps for n in nics),
            net_sent_bps=sum(n.sent_bps for n in nics),
            nics=nics,
            open_fds=facts.open_fds,
            agent_cpu_percent=_agent_cpu_percent(prev, cur, dt),
            agent_rss=facts.rss,
            active_transfers=facts.active_transfers,
            transfer_bps=(counter_rate(prev.transfer_bytes, cur.transfer_bytes, dt)
                          if cur.transfer_bytes is not None else 0.0),
            inotify_watches_used=facts.watches[0],
            inotify_watches_max=facts.watches[1],
            data_nic=facts.data_nic,
        )

    def _facts(self) -> _Facts:
        """The readings that are levels, not counters (no rate to compute)."""
        mem = self._probe("virtual_memory", psutil.virtual_memory, None)
        with self._proc.oneshot():
            open_fds = self._probe("num_fds", self._proc.num_fds, 0)
            rss = self._probe("memory_info", lambda: self._proc.memory_info().rss, 0)
        cpu_count = self._probe("cpu_count", lambda: psutil.cpu_count(logical=True), None) or os.cpu_count()
        return _Facts(
            load=self._probe("loadavg", os.getloadavg, (0.0, 0.0, 0.0)),
            mem_total=mem.total if mem is not None else 0,
            mem_available=mem.available if mem is not None else 0,
            open_fds=open_fds,
            rss=rss,
            cpu_count=cpu_count or 0,
            watches=self._probe("inotify", self._inotify.read, (0, 0)),
            data_nic=self._probe("net_if_addrs", self._data_nic, ""),
            active_transfers=self._probe("active_transfers", self._active_transfers, 0),
        )


@dataclass(frozen=True, slots=True)
class _Facts:
    load: tuple[float, float, float]
    mem_total: int
    mem_available: int
    open_fds: int
    rss: int
    cpu_count: int
    watches: tuple[int, int]  # inotify watches used, and the per-user limit
    data_nic: str
    active_transfers: int


def _per_core(prev: _Counters, cur: _Counters) -> tuple[float, ...]:
    return tuple(_cpu_busy_percent(prev.per_cpu[i] if i < len(prev.per_cpu) else None, t)
                 for i, t in enumerate(cur.per_cpu))


def _agent_cpu_percent(prev: _Counters, cur: _Counters, dt: float) -> float:
    if cur.agent_cpu_seconds is None or prev.agent_cpu_seconds is None or dt <= 0:
        return 0.0
    return max(0.0, cur.agent_cpu_seconds - prev.agent_cpu_seconds) / dt * 100.0


def _disk_rates(prev: _Counters, cur: _Counters, dt: float, names: Iterable[str]) -> tuple[DiskIO, ...]:
    disks: list[DiskIO] = []
    for name in names:
        r, w, busy = cur.disks[name]
        pr, pw, pbusy = prev.disks.get(name, (None, None, None))
        # busy_time is milliseconds of I/O in flight, so ms/s divided by 10 is percent.
        busy_pct = min(100.0, counter_rate(pbusy, busy, dt) / 10.0) if busy is not None else 0.0
        disks.append(DiskIO(device=name, read_bps=counter_rate(pr, r, dt), write_bps=counter_rate(pw, w, dt),
                            busy_percent=busy_pct))
    return tuple(disks)


def _nic_rates(prev: _Counters, cur: _Counters, dt: float, speeds: dict[str, Any]) -> tuple[NetIO, ...]:
    nics: list[NetIO] = []
    for name in sorted(cur.nics):
        rx, tx = cur.nics[name]
        prx, ptx = prev.nics.get(name, (None, None))
        nic_stats = speeds.get(name)
        nics.append(NetIO(interface=name, recv_bps=counter_rate(prx, rx, dt), sent_bps=counter_rate(ptx, tx, dt),
                          speed_mbps=max(0, int(nic_stats.speed)) if nic_stats is not None else 0))
    return tuple(nics)


class HealthMonitor:
    """Samples a :class:`HealthSampler` on a daemon thread every ``interval`` seconds; a context manager.

    ``latest`` is the newest sample (an all-zero ``HostHealth()`` before the first one), ``samples`` how many
    were taken (the history is the controller's: it keeps each agent's). The controller sets the cadence at
    runtime through :meth:`set_interval`, which takes effect at once rather than after the interval already
    being waited out.
    """

    def __init__(self, sampler: HealthSampler, interval: float) -> None:
        self._sampler = sampler
        self._interval = self._check_interval(interval)
        self._lock = threading.Lock()
        self._samples = 0
        self._latest = HostHealth()
        self._stop = threading.Event()
        # Set by stop() and set_interval() to cut the current wait short.
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _check_interval(seconds: float) -> float:
        if not seconds > 0:  # also rejects NaN
            raise ValueError(f"health sampling interval must be > 0 seconds, got {seconds!r}")
        return float(seconds)

    @property
    def interval(self) -> float:
        return self._interval

    @property
    def latest(self) -> HostHealth:
        return self._latest

    @property
    def samples(self) -> int:
        """Samples taken so far."""
        return self._samples

    def set_interval(self, seconds: float) -> None:
        """Change the cadence; the next sample is due ``seconds`` after the previous one."""
        self._interval = self._check_interval(seconds)
        self._wake.set()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("HealthMonitor already started")
        self._thread = threading.Thread(target=self._run, name="zc-health", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop sampling and join the thread; safe to call twice or before ``start()``."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                # Only a sample stuck in the kernel (a hung NFS export) gets here; the thread is a daemon.
                log.warning("health thread did not stop timeout_s=%s", timeout)

    def __enter__(self) -> HealthMonitor:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _tick(self) -> None:
        try:
            health = self._sampler.sample()
        except Exception:  # a bug here must not end sampling for the life of the agent
            log.exception("health sample failed")
            return
        with self._lock:
            self._samples += 1
            self._latest = health

    def _run(self) -> None:
        while not self._stop.is_set():
            last = time.monotonic()
            self._tick()
            while True:
                # Clear before reading the interval: a set_interval() racing with us either is seen here
                # or leaves _wake set so the wait below returns at once and we look again.
                self._wake.clear()
                remaining = last + self._interval - time.monotonic()
                if self._stop.is_set() or remaining <= 0:
                    break
                self._wake.wait(remaining)
