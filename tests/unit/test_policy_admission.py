"""Tests for zcrepl.controller.policy's admission: the disk and NIC behind a job, the thresholds, what blocks a
host, free space at the destination, stale health."""

from __future__ import annotations

from dataclasses import replace

import pytest
from policyhelpers import NOW, GiB, MiB, T, hh

from zcrepl.controller.policy import LinkState, disk_for, host_blockers, rank_sources, wait_reason
from zcrepl.controller.throttle import Throttle, throttle_decision
from zcrepl.core.errors import ConfigError
from zcrepl.core.types import DiskIO, DiskUsage, Endpoint, HostHealth, NetIO, Role

# -- the disk behind a job's path -------------------------------------------------------------------

# Two exports: /srv on sda (quiet, 20% busy), /data on sdb (93% busy); /tmp-ish has no known device.
MAPPED = (DiskUsage(b"/srv", 1000 * GiB, 100 * GiB, 900 * GiB, 10.0, "sda"),
          DiskUsage(b"/data", 1000 * GiB, 100 * GiB, 900 * GiB, 10.0, "sdb"),
          DiskUsage(b"/scratch", 1000 * GiB, 100 * GiB, 900 * GiB, 10.0, ""))


def mapped(sda: float = 20.0, sdb: float = 93.0) -> HostHealth:
    return replace(hh(exports=MAPPED), disks=(DiskIO("sda", 0, 0, sda), DiskIO("sdb", 0, 0, sdb)))


@pytest.mark.parametrize(
    ("path", "device"),
    [
        (b"/srv/x/y", "sda"),  # the export's own device, although another disk is busier
        (b"/data/x", "sdb"),
        (b"/scratch/x", "sdb"),  # device unknown: the busiest disk stands in
        (b"/elsewhere", "sdb"),  # outside the exports: likewise
        (None, "sdb"),
    ],
)
def test_disk_for_path(path: bytes | None, device: str) -> None:
    d = disk_for(mapped(), path)
    assert d is not None and d.device == device


def test_disk_for_a_device_missing_from_the_sample_falls_back() -> None:
    h = replace(mapped(), disks=(DiskIO("sdc", 0, 0, 50.0),))
    assert disk_for(h, b"/srv/x") == DiskIO("sdc", 0, 0, 50.0)
    assert disk_for(replace(h, disks=()), b"/srv/x") is None


@pytest.mark.parametrize(
    ("path", "role", "blocked"),
    [
        (b"/srv/in", Role.RECEIVER, False),  # writes to the quiet sda: goes, though sdb is 93% busy
        (b"/data/in", Role.RECEIVER, True),
        (b"/srv/out", Role.SENDER, False),
        (b"/data/out", Role.SENDER, True),
        (b"/scratch/out", Role.SENDER, True),
    ],
)
def test_admission_judges_the_disk_behind_the_jobs_path(path: bytes, role: Role, blocked: bool) -> None:
    why = host_blockers("h", mapped(), T, role=role, path=path, now=NOW)
    assert bool(why) == blocked, why
    if blocked:
        assert why == ["h disk 93% busy (sdb, limit 90%)"]


def test_throttle_judges_the_disks_behind_both_paths() -> None:
    hot = mapped(sda=10.0, sdb=99.0)
    quiet = throttle_decision(hot, hot, T, 0, LinkState("a", "b", ema_bps=100 * MiB), now=NOW,
                              src_path=b"/srv/x", dst_path=b"/srv/y")
    assert quiet.action is Throttle.HOLD and "running" in quiet.reason
    slow = throttle_decision(hot, hot, T, 0, LinkState("a", "b", ema_bps=100 * MiB), now=NOW,
                             src_path=b"/srv/x", dst_path=b"/data/y")
    assert slow.action is Throttle.SLOW and "b disk 99% busy (sdb, limit 98%)" in slow.reason
    assert "a disk" not in slow.reason


@pytest.mark.parametrize(
    ("data_nic", "blocked"),
    [
        ("eth1", False),  # transfers use eth1 (20% busy), though eth0 is 90% busy
        ("eth0", True),
        ("", True),  # unknown: the busiest NIC stands in
        ("lo", True),  # no known speed: likewise
        ("eth9", True),  # not in the sample: likewise
    ],
)
def test_admission_judges_the_nic_behind_the_data_address(data_nic: str, blocked: bool) -> None:
    h = replace(hh(), data_nic=data_nic, nics=(NetIO("lo", 9e9, 9e9, 0), NetIO("eth0", 0, 900e6 / 8, 1000),
                                                NetIO("eth1", 0, 200e6 / 8, 1000)))
    why = host_blockers("h", h, T, role=Role.SENDER, now=NOW)
    assert why == (["h network 90% used sending (eth0 1000 Mb/s, limit 85%)"] if blocked else [])


def test_rank_sources_reads_the_disk_behind_each_copy() -> None:
    h = mapped(sda=10.0, sdb=80.0)  # under the start threshold, but /data's disk is busier
    ranked = rank_sources([Endpoint("a", b"/data/copy"), Endpoint("b", b"/srv/copy")], Endpoint("c", b"/x"), {},
                          {"a": h, "b": h}, {}, NOW)
    assert [r.source.host for r in ranked] == ["b", "a"]


# -- Thresholds ------------------------------------------------------------------------------------


def test_default_thresholds_are_valid_and_high_water_marks_sit_above_start() -> None:
    T.validate()
    for start, high in zip(T.limits(high=False), T.limits(high=True), strict=True):
        assert high > start


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"high_cpu_percent": 80.0}, r"high_cpu_percent \(80\) must be at least max_cpu_percent \(85\)"),
        ({"high_disk_busy_percent": 50.0}, "high_disk_busy_percent"),
        ({"max_load_per_core": 0.0}, "max_load_per_core must be a positive number"),
        ({"slow_factor": 1.0}, "slow_factor"),
        ({"speedup_factor": 1.0}, "speedup_factor"),
    ],
)
def test_thresholds_validate_names_the_bad_setting(change: dict[str, float], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        replace(T, **change).validate()


# -- host_blockers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("health", "role", "expected"),
    [
        (hh(), Role.SENDER, []),
        (hh(), Role.RECEIVER, []),
        (hh(cpu=85.0, load=12.0, disk=90.0, tx_mbps=850), Role.SENDER, []),  # at a threshold is not over it
        (hh(cpu=93.0), Role.SENDER, ["host CPU 93% busy (limit 85%)"]),
        (hh(load=19.2), Role.SENDER, ["host load 2.4 per core (limit 1.5)"]),
        (hh(disk=93.0), Role.RECEIVER, ["host disk 93% busy (sdb, limit 90%)"]),
        (hh(tx_mbps=950), Role.SENDER, ["host network 95% used sending (eth0 1000 Mb/s, limit 85%)"]),
        (hh(rx_mbps=900), Role.RECEIVER, ["host network 90% used receiving (eth0 1000 Mb/s, limit 85%)"]),
        (hh(rx_mbps=950), Role.SENDER, []),  # a sender only loads the transmit side
        (hh(tx_mbps=950, speed=0), Role.SENDER, []),  # unknown link speed: not judged
        (hh(cpu=99.0, disk=95.0), Role.SENDER,
         ["host CPU 99% busy (limit 85%)", "host disk 95% busy (sdb, limit 90%)"]),
    ],
    ids=["idle-sender", "idle-receiver", "at-thresholds", "cpu", "load", "disk", "net-tx", "net-rx",
         "rx-on-sender", "speed-unknown", "two-reasons"],
)
def test_host_blockers_name_each_figure_over_its_threshold(health: HostHealth, role: Role,
                                                           expected: list[str]) -> None:
    assert host_blockers("host", health, T, role=role, now=NOW) == expected


def test_wait_reason_reads_like_the_issue_example() -> None:
    blockers = host_blockers("hostB", hh(disk=93.0), T, role=Role.RECEIVER, now=NOW)
    assert wait_reason(blockers).startswith("waiting: hostB disk 93% busy")
    assert wait_reason([]) == ""
    assert wait_reason(["a", "b"]) == "waiting: a; b"


@pytest.mark.parametrize(
    ("free", "total", "to_move", "blocked"),
    [
        (3.2 * GiB, 100 * GiB, 9 * GiB, True),  # needs 9 GiB + 1 GiB margin
        (10.5 * GiB, 100 * GiB, 9 * GiB, False),
        (9.5 * GiB, 100 * GiB, 9 * GiB, True),  # room for the bytes, not for the margin
        (6 * MiB, 100 * MiB, 0, False),  # small filesystem: margin is 5% = 5 MiB, not 1 GiB
        (4 * MiB, 100 * MiB, 0, True),
    ],
)
def test_destination_free_space_must_cover_bytes_plus_margin(free: float, total: int, to_move: int,
                                                             blocked: bool) -> None:
    h = hh(free=int(free), total=total)
    out = host_blockers("hostB", h, T, role=Role.RECEIVER, bytes_to_move=to_move, path=b"/srv/d", now=NOW)
    assert bool(out) is blocked
    if blocked:
        assert out[0].startswith(f"hostB has {free / GiB:.1f} GiB free on /srv, needs" if free > GiB
                                 else "hostB has 4.0 MiB free on /srv, needs 5.0 MiB")


def test_free_space_message_matches_the_brief() -> None:
    (why,) = host_blockers("hostB", hh(free=int(3.2 * GiB), total=100 * GiB), T, role=Role.RECEIVER,
                           bytes_to_move=9 * GiB, path=b"/srv", now=NOW)
    assert why == "hostB has 3.2 GiB free on /srv, needs 10.0 GiB (9.0 GiB to move + 1.0 GiB margin)"


def test_free_space_is_not_a_senders_concern() -> None:
    assert host_blockers("hostA", hh(free=0), T, role=Role.SENDER, bytes_to_move=9 * GiB, now=NOW) == []


def test_free_space_checks_the_export_holding_the_destination_path() -> None:
    full = DiskUsage(b"/full", 100 * GiB, 100 * GiB, 0, 100.0)
    roomy = DiskUsage(b"/roomy", 100 * GiB, 0, 100 * GiB, 0.0)
    nested = DiskUsage(b"/roomy/full", 100 * GiB, 100 * GiB, 0, 100.0)
    h = hh(exports=(full, roomy, nested))
    check = lambda p: host_blockers("b", h, T, role=Role.RECEIVER, path=p, bytes_to_move=GiB, now=NOW)  # noqa: E731
    assert check(b"/roomy/x") == []
    assert check(b"/full/x")
    assert check(b"/roomy/full/x"), "the longest export root holding the path decides"
    assert check(None), "with no path the tightest export decides"


@pytest.mark.parametrize(
    ("health", "max_age", "words"),
    [
        (None, None, "hostA has reported no health yet; its load is unknown"),
        (hh(at=NOW - 12), None, "hostA health is 12s old (limit 5s); its load is unknown"),
        (hh(at=NOW - 12, cpu=99.0), None, "hostA health is 12s old"),  # stale figures are not reported
        (hh(at=NOW - 12), 20.0, None),
        (hh(at=NOW - 3), 2.0, "hostA health is 3s old (limit 2s)"),
    ],
    ids=["never", "stale", "stale-hides-figures", "max-age-override", "max-age-stricter"],
)
def test_stale_or_missing_health_blocks(health: HostHealth | None, max_age: float | None, words: str | None) -> None:
    out = host_blockers("hostA", health, T, role=Role.SENDER, now=NOW, max_age=max_age)
    if words is None:
        assert out == []
    else:
        assert len(out) == 1
        assert out[0].startswith(words)
