"""Tests for zcrepl.agent.health: counter_rate table, real psutil samples, injected clocks, the monitor."""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from zcrepl.agent.health import HealthMonitor, HealthSampler, counter_rate
from zcrepl.core.types import HostHealth

MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def _no_leaks() -> Iterator[None]:
    """House rule: a test leaves no thread and no fd behind."""
    threads = set(threading.enumerate())
    fds = set(os.listdir("/proc/self/fd"))
    yield
    extra_threads = [t for t in threading.enumerate() if t not in threads]
    assert not extra_threads, f"threads left behind: {extra_threads}"
    # listdir's own fd shows up in the listing, so compare counts of names that did not exist before.
    extra_fds = set(os.listdir("/proc/self/fd")) - fds
    assert len(extra_fds) <= 1, f"fds left behind: {extra_fds}"


def _wait_until(cond: Callable[[], bool], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.005)
    return cond()


def _all_rates(h: HostHealth) -> list[float]:
    return [
        h.swap_in_bps,
        h.swap_out_bps,
        h.disk_read_bps,
        h.disk_write_bps,
        h.net_recv_bps,
        h.net_sent_bps,
        h.agent_cpu_percent,
        *(d.read_bps for d in h.disks),
        *(d.write_bps for d in h.disks),
        *(d.busy_percent for d in h.disks),
        *(n.recv_bps for n in h.nics),
        *(n.sent_bps for n in h.nics),
    ]


def _loopback_transfer(nbytes: int) -> None:
    """Push ``nbytes`` through a TCP connection on 127.0.0.1 and wait until all of it arrived."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    chunk = b"\0" * MiB

    def send() -> None:
        for _ in range(nbytes // len(chunk)):
            client.sendall(chunk)
        client.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send)
    with client, server:
        sender.start()
        received = 0
        while data := server.recv(4 * MiB):
            received += len(data)
        sender.join()
    assert received == nbytes


def _write_fsynced(path: Path, nbytes: int) -> None:
    chunk = os.urandom(MiB)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(nbytes // len(chunk)):
            os.write(fd, chunk)
        os.fsync(fd)
    finally:
        os.close(fd)


def _fstype(path: Path) -> str:
    best = ""
    fstype = ""
    for part in psutil.disk_partitions(all=True):
        mp = part.mountpoint
        if (str(path) == mp or str(path).startswith(mp.rstrip("/") + "/")) and len(mp) > len(best):
            best, fstype = mp, part.fstype
    return fstype


@pytest.mark.parametrize(
    ("prev", "cur", "dt", "expected"),
    [
        pytest.param(1000, 3000, 2.0, 1000.0, id="normal"),
        pytest.param(0, 0, 1.0, 0.0, id="idle"),
        pytest.param(5, 5 + 10 * MiB, 0.5, 20.0 * MiB, id="sub-second"),
        pytest.param(2**32 - 100, 50, 1.0, 0.0, id="32bit-wrap"),
        pytest.param(10 * MiB, 0, 1.0, 0.0, id="reset"),
        pytest.param(None, 12345, 1.0, 0.0, id="first-sample"),
        pytest.param(100, 200, 0.0, 0.0, id="dt-zero"),
        pytest.param(100, 200, -1.0, 0.0, id="dt-negative"),
    ],
)
def test_counter_rate(prev: int | None, cur: int, dt: float, expected: float) -> None:
    assert counter_rate(prev, cur, dt) == expected


def test_sample_is_sane(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    exports = [os.fsencode(tmp_path), os.fsencode(gone)]
    sampler = HealthSampler(exports, active_transfers=lambda: 3, clock=lambda: 1234.5)
    time.sleep(0.05)  # give cpu times a window to move in
    h = sampler.sample()

    assert h.sampled_at == 1234.5
    assert h.cpu_count == os.cpu_count()
    assert 0.0 <= h.cpu_percent <= 100.0
    assert len(h.cpu_per_core) == os.cpu_count()
    assert all(0.0 <= p <= 100.0 for p in h.cpu_per_core)
    assert 0 < h.mem_available <= h.mem_total
    assert h.load1 >= 0.0 and h.load5 >= 0.0 and h.load15 >= 0.0
    assert h.open_fds > 0
    assert h.agent_rss > 0
    assert h.agent_cpu_percent >= 0.0
    assert h.active_transfers == 3

    assert [u.path for u in h.exports] == exports
    live, vanished = h.exports
    assert live.total > 0 and live.free > 0 and 0.0 <= live.percent <= 100.0
    assert (vanished.total, vanished.used, vanished.free, vanished.percent) == (0, 0, 0, 100.0)

    # The devices behind the export are real psutil devices; lo is always listed.
    assert h.disks, "no disk picked for an export on a real filesystem"
    assert {d.device for d in h.disks} <= set(psutil.disk_io_counters(perdisk=True))
    assert "lo" in {n.interface for n in h.nics}
    assert all(n.speed_mbps >= 0 for n in h.nics)
    assert all(math.isfinite(r) and r >= 0.0 for r in _all_rates(h))


class _Stopwatch:
    """A real monotonic clock that remembers its readings, to turn a rate back into bytes."""

    def __init__(self) -> None:
        self.readings: list[float] = []

    def __call__(self) -> float:
        self.readings.append(time.monotonic())
        return self.readings[-1]

    @property
    def last_dt(self) -> float:
        return self.readings[-1] - self.readings[-2]


def test_disk_write_rate_is_real(tmp_path: Path) -> None:
    if _fstype(tmp_path) in ("tmpfs", "ramfs"):
        pytest.skip(f"{tmp_path} is in memory: fsync reaches no disk")
    clock = _Stopwatch()
    sampler = HealthSampler([os.fsencode(tmp_path)], monotonic=clock)
    sampler.sample()
    _write_fsynced(tmp_path / "blob", 64 * MiB)
    h = sampler.sample()
    # Totals are the sum over the chosen devices, whether the export mapped to its own device or we fell
    # back to every physical disk; assert on the total so both paths are covered. fsync means all 64 MiB
    # reached the device inside the window (half of it is the margin for odd storage).
    assert h.disk_write_bps * clock.last_dt > 32 * MiB, h.disks
    assert h.disk_write_bps == pytest.approx(sum(d.write_bps for d in h.disks))
    assert max(d.busy_percent for d in h.disks) > 0


def test_net_rates_are_real_on_loopback(tmp_path: Path) -> None:
    clock = _Stopwatch()
    sampler = HealthSampler([os.fsencode(tmp_path)], monotonic=clock)
    sampler.sample()
    _loopback_transfer(32 * MiB)
    h = sampler.sample()
    assert h.net_recv_bps > MiB
    assert h.net_sent_bps > MiB
    # Byte-exact enough to catch recv/sent mix-ups or a wrong dt: lo carries each byte once each way.
    assert h.net_recv_bps * clock.last_dt >= 32 * MiB
    assert h.net_sent_bps * clock.last_dt >= 32 * MiB
    lo = next(n for n in h.nics if n.interface == "lo")
    assert lo.recv_bps > MiB and lo.sent_bps > MiB
    assert h.net_recv_bps == pytest.approx(sum(n.recv_bps for n in h.nics))
    assert h.net_sent_bps == pytest.approx(sum(n.sent_bps for n in h.nics))


@pytest.mark.parametrize(
    "monotonic",
    [
        pytest.param(lambda: 100.0, id="frozen"),
        pytest.param(iter(range(1000, 0, -1)).__next__, id="backwards"),
    ],
)
def test_injected_clock_without_progress_gives_zero_rates(
    tmp_path: Path, monotonic: Callable[[], float]
) -> None:
    sampler = HealthSampler([os.fsencode(tmp_path)], monotonic=monotonic)
    sampler.sample()
    # Move the counters for real, so a division by the zero or negative dt would show.
    _loopback_transfer(4 * MiB)
    _write_fsynced(tmp_path / "blob", 4 * MiB)
    h = sampler.sample()
    assert _all_rates(h) == [0.0] * len(_all_rates(h))


def test_failing_psutil_sources_degrade_to_zeros(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise PermissionError("denied")

    monkeypatch.setattr(psutil, "disk_io_counters", lambda *a, **k: None)
    monkeypatch.setattr(psutil, "net_io_counters", boom)
    monkeypatch.setattr(psutil, "net_if_stats", boom)
    monkeypatch.setattr(psutil, "swap_memory", boom)
    monkeypatch.setattr(psutil, "virtual_memory", boom)
    monkeypatch.setattr(psutil, "cpu_times", boom)
    monkeypatch.setattr(os, "getloadavg", boom)
    sampler = HealthSampler([os.fsencode(tmp_path)], active_transfers=boom)  # type: ignore[arg-type]
    h = sampler.sample()
    assert (h.disks, h.nics, h.disk_write_bps, h.net_recv_bps) == ((), (), 0.0, 0.0)
    assert (h.mem_total, h.load1, h.cpu_percent, h.cpu_per_core, h.swap_in_bps) == (0, 0.0, 0.0, (), 0.0)
    assert h.active_transfers == 0
    assert h.exports[0].total > 0  # the sources that work still report


def test_sample_is_serialised(tmp_path: Path) -> None:
    """A second caller waits while a first is inside sample(): the previous-counters state is shared."""
    entered, release = threading.Event(), threading.Event()
    calls = 0

    def monotonic() -> float:
        nonlocal calls
        calls += 1
        if calls == 2:  # call 1 primes the counters in __init__; call 2 is the first sample()
            entered.set()
            release.wait(5)
        return time.monotonic()

    sampler = HealthSampler([os.fsencode(tmp_path)], monotonic=monotonic)
    second_done = threading.Event()

    def second_sample() -> None:
        sampler.sample()
        second_done.set()

    first = threading.Thread(target=sampler.sample)
    second = threading.Thread(target=second_sample)
    first.start()
    try:
        assert entered.wait(5)
        second.start()
        assert not second_done.wait(0.2), "second sample() ran while the first was still inside"
    finally:
        release.set()
        first.join()
        if second.ident is not None:
            second.join()
    assert second_done.is_set()


def test_monitor_samples_and_stops_promptly(tmp_path: Path) -> None:
    sampler = HealthSampler([os.fsencode(tmp_path)])
    monitor = HealthMonitor(sampler, interval=0.01)
    assert monitor.latest == HostHealth() and monitor.samples == 0
    with monitor:
        assert _wait_until(lambda: monitor.samples >= 3)
        assert monitor.latest.sampled_at > 0
        started = time.monotonic()
    assert time.monotonic() - started < 1.0
    assert not any(t.name == "zc-health" for t in threading.enumerate())


def test_monitor_set_interval_takes_effect_at_once(tmp_path: Path) -> None:
    sampler = HealthSampler([os.fsencode(tmp_path)])
    monitor = HealthMonitor(sampler, interval=30.0)
    monitor.start()
    try:
        assert _wait_until(lambda: monitor.samples == 1)
        time.sleep(0.1)
        assert monitor.samples == 1  # still waiting out the 30 s interval
        monitor.set_interval(0.01)  # must cut the 30 s wait short
        assert monitor.interval == 0.01
        assert _wait_until(lambda: monitor.samples >= 5, timeout=1.0)
        monitor.set_interval(30.0)
        time.sleep(0.05)  # let a sample already under way land
        n = monitor.samples
        time.sleep(0.2)
        assert monitor.samples == n
        with pytest.raises(ValueError):
            monitor.set_interval(0)
        with pytest.raises(ValueError):
            monitor.set_interval(float("nan"))
    finally:
        started = time.monotonic()
        monitor.stop()
    # stop() cuts the 30 s wait short too
    assert time.monotonic() - started < 1.0
    assert not any(t.name == "zc-health" for t in threading.enumerate())
    monitor.stop()  # idempotent


# -- export devices, transfer rate, inotify headroom -------------------------------------------------


def test_each_export_names_its_device_as_listed_in_disks(tmp_path: Path) -> None:
    h = HealthSampler([os.fsencode(tmp_path), os.fsencode(tmp_path / "gone")]).sample()
    live, vanished = h.exports
    assert vanished.device == ""
    if live.device:  # found via st_dev and /sys/dev/block: it must be one of the reported disks
        assert live.device in {d.device for d in h.disks}
    else:  # tmpfs, overlayfs...: unknown, and the disks fall back to every physical disk
        assert _fstype(tmp_path) not in ("ext4", "xfs")


def test_export_device_follows_st_dev(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sysfs lookup is what decides: a mapped export reports that device and only it."""
    import zcrepl.agent.health as health

    counters = psutil.disk_io_counters(perdisk=True)
    name = sorted(counters)[0]
    monkeypatch.setattr(health, "_block_device_name", lambda st_dev: name)
    h = HealthSampler([os.fsencode(tmp_path)]).sample()
    assert h.exports[0].device == name
    assert [d.device for d in h.disks] == [name]


def test_transfer_rate_is_the_rate_of_the_byte_counter(tmp_path: Path) -> None:
    moved = [0]
    clock = iter([100.0, 102.0, 104.0, 105.0]).__next__
    sampler = HealthSampler([os.fsencode(tmp_path)], transfer_bytes=lambda: moved[0], monotonic=clock)
    moved[0] = 64 * MiB
    assert sampler.sample().transfer_bps == 32 * MiB
    moved[0] = 96 * MiB
    assert sampler.sample().transfer_bps == 16 * MiB
    moved[0] = 0  # counter reset (an agent restart would look like this): no negative rate
    assert sampler.sample().transfer_bps == 0.0


class _Fixed:
    def __init__(self, used: int, limit: int) -> None:
        self.value = (used, limit)

    def read(self) -> tuple[int, int]:
        return self.value


def test_inotify_figures_reach_the_sample(tmp_path: Path) -> None:
    h = HealthSampler([os.fsencode(tmp_path)], inotify=_Fixed(1200, 8192)).sample()  # type: ignore[arg-type]
    assert (h.inotify_watches_used, h.inotify_watches_max) == (1200, 8192)


@pytest.mark.parametrize(("host", "nic"), [("127.0.0.1", "lo"), ("[::1]", "lo"), ("192.0.2.77", ""), ("", "")])
def test_data_nic_is_the_interface_holding_the_data_address(tmp_path: Path, host: str, nic: str) -> None:
    addrs = {a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs}
    if host.strip("[]") == "::1" and "::1" not in addrs:
        pytest.skip("no IPv6 loopback here")
    assert HealthSampler([os.fsencode(tmp_path)], data_host=host).sample().data_nic == nic
