"""Tests for zcrepl.controller.policy: admission, streams, AIMD, source ranking, aging, throttling, history."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace
from typing import Any

import pytest

from zcrepl.controller.policy import (
    MAX_STREAMS,
    AimdParams,
    DecisionKind,
    DecisionRecord,
    LinkSample,
    LinkState,
    Priority,
    RankedSource,
    Thresholds,
    aimd_step,
    choose_streams,
    disk_for,
    effective_priority,
    host_blockers,
    order_queue,
    rank_sources,
    wait_reason,
)
from zcrepl.controller.throttle import Throttle, ThrottleDecision, throttle_decision
from zcrepl.core.errors import ConfigError
from zcrepl.core.types import DiskIO, DiskUsage, Endpoint, HostHealth, Job, JobOptions, JobState, NetIO, Role

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


# -- choose_streams --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("src", "dst", "expected"),
    [
        (hh(cpu=0, load=0), hh(cpu=0, load=0), 8),
        (hh(cpu=50, load=0), hh(cpu=0, load=0), 4),
        (hh(cpu=0, load=6), hh(cpu=0, load=0), 2),  # run queue counts too
        (hh(cpu=90, load=0), hh(cpu=0, load=0), 1),  # 0.8 free cores: still 1 stream
        (hh(cpu=100, load=40), hh(cpu=100, load=40), 1),
        (hh(cpu=0, load=0, cores=64), hh(cpu=0, load=0, cores=64), MAX_STREAMS),
        (hh(cpu=0, load=0, cores=2), hh(cpu=0, load=0, cores=32), 2),
        (None, hh(cpu=0, load=0, cores=4), 4),
        (None, None, 1),
    ],
    ids=["idle", "half-cpu", "load", "nearly-full", "saturated", "max", "small-end", "one-unknown",
         "both-unknown"],
)
def test_streams_follow_free_cores_of_the_tighter_end(src: HostHealth | None, dst: HostHealth | None,
                                                      expected: int) -> None:
    assert choose_streams(src, dst, 0, {})[0] == expected


def test_streams_shrink_as_load_grows() -> None:
    got = [choose_streams(hh(cpu=c, load=0, cores=16), hh(cpu=0, load=0, cores=16), 0, {})[0]
           for c in range(0, 101, 10)]
    assert got == sorted(got, reverse=True)
    assert got[0] == 16
    assert got[-1] == 1


def test_streams_reason_names_the_tighter_end_and_the_cap() -> None:
    n, why = choose_streams(hh(cpu=0, load=0), hh(cpu=50, load=0), 0, {"link a→b cap": 3})
    assert n == 3
    assert "4 free cores on the destination" in why
    assert why.endswith("capped at 3 by link a→b cap")
    assert choose_streams(hh(cpu=0, load=0), None, 2, {})[1].endswith("capped at 2 by the job's --streams")


@pytest.mark.parametrize(
    ("requested", "caps", "expected"),
    [
        (0, {}, 16),
        (4, {}, 4),
        (100, {}, 16),  # a request is a ceiling, not a way past MAX_STREAMS
        (0, {"hostA": 6, "link": 0}, 6),  # 0 = no cap declared
        (5, {"hostA": 6, "hostB": 3}, 3),
    ],
)
def test_streams_never_exceed_requested_or_caps(requested: int, caps: dict[str, int], expected: int) -> None:
    idle = hh(cpu=0, load=0, cores=64)
    assert choose_streams(idle, idle, requested, caps)[0] == expected


def test_request_does_not_raise_streams_above_free_cores() -> None:
    assert choose_streams(hh(cpu=75, load=0), hh(cpu=0, load=0), 8, {})[0] == 2


def test_streams_stay_within_every_ceiling_over_a_grid() -> None:
    for cpu in (0, 30, 60, 99):
        for cap in (0, 1, 2, 5, 40):
            for req in (0, 1, 3, 20):
                n, _ = choose_streams(hh(cpu=cpu, load=0, cores=32), hh(cpu=0, load=0, cores=32), req, {"c": cap})
                assert 1 <= n <= MAX_STREAMS
                assert n <= (cap or MAX_STREAMS)
                assert n <= (req or MAX_STREAMS)


# -- aimd_step -------------------------------------------------------------------------------------

P = AimdParams()


def link(streams: int = 4, ema: float = 100 * MiB, avg: float = 100 * MiB, success: float = 1.0) -> LinkState:
    return LinkState("a", "b", streams=streams, ema_bps=ema, success=success, avg_file_size=avg)


def sample(bps: float, avg: float = 100 * MiB, failed: int = 0, seconds: float = 2.0) -> LinkSample:
    moved = int(bps * seconds)
    return LinkSample(NOW, seconds, moved, files=max(1, round(moved / avg)) if moved else 0, failed=failed)


@pytest.mark.parametrize(
    ("state", "s", "expected", "words"),
    [
        (link(), sample(120 * MiB), 5, "streams 4 → 5"),  # grows: additive +1
        (link(), sample(100 * MiB), 5, "streams 4 → 5"),  # holds: still +1
        (link(), sample(80 * MiB), 5, "streams 4 → 5"),  # within noise: not a drop
        (link(streams=8), LinkSample(NOW, 2.0, 0, files=0, failed=5), 4, "5 failed, success 50% < 97%"),
        (link(streams=8), sample(100 * MiB, avg=100 * KiB, failed=1), 9, "streams 8 → 9"),  # 1 in ~2000
        (link(streams=8), sample(30 * MiB), 4, "throughput fell 100.0 MiB/s → 30.0 MiB/s, streams 8 → 4"),
        (link(streams=8), sample(30 * MiB, avg=50 * MiB), 4, "throughput fell"),  # same magnitude of size
        (link(streams=8), sample(10 * MiB, avg=1 * MiB), 9, "smaller files, not congestion"),
        (link(streams=1), LinkSample(NOW, 2.0, 0, files=0, failed=3), 1, "streams 1 → 1"),  # floor
        (link(streams=6), LinkSample(NOW, 2.0, 0), 6, "idle window, holding 6 streams"),
        (link(streams=6, success=0.5), sample(100 * MiB), 6, "success recovering, holding 6 streams"),
        (link(streams=MAX_STREAMS), sample(100 * MiB), MAX_STREAMS, "at the cap of 16 streams"),
    ],
    ids=["grows", "holds", "noise", "failures-cut", "rare-failure", "drop-cuts", "drop-same-size",
         "drop-smaller-files", "floor", "idle", "recovering", "at-cap"],
)
def test_aimd_step_table(state: LinkState, s: LinkSample, expected: int, words: str) -> None:
    new, why = aimd_step(state, s, P)
    assert new.streams == expected
    assert words in why
    assert why.startswith("a→b: ")



def test_small_file_drop_rebases_the_ema_so_the_next_small_window_is_not_a_drop() -> None:
    state, _ = aimd_step(link(streams=8), sample(10 * MiB, avg=MiB), P)
    assert state.ema_bps == pytest.approx(10 * MiB, rel=0.01)
    assert state.avg_file_size == pytest.approx(MiB, rel=0.05)
    state, why = aimd_step(state, sample(9 * MiB, avg=MiB), P)
    assert state.streams == 10, why


def test_aimd_cuts_multiplicatively_and_raises_additively() -> None:
    state = link(streams=12)
    state, _ = aimd_step(state, LinkSample(NOW, 2.0, 0, files=0, failed=4), P)
    assert state.streams == 6
    state = replace(state, success=1.0)
    for expected in (7, 8, 9):
        state, _ = aimd_step(state, sample(100 * MiB), P)
        assert state.streams == expected


@pytest.mark.parametrize(("cap", "start"), [(16, 1), (8, 2), (4, 4), (40, 1)])
def test_aimd_converges_to_the_cap_on_a_healthy_link(cap: int, start: int) -> None:
    ceiling = min(cap, MAX_STREAMS)
    state = LinkState("a", "b", streams=start)
    steps = 0
    while state.streams < ceiling:
        # a healthy link: throughput grows with streams until it saturates at 8 streams, no failures
        state, _ = aimd_step(state, sample(min(state.streams, 8) * 20 * MiB), P, cap=cap)
        steps += 1
        assert steps <= ceiling - start, "one additive step per sample: N samples reach the cap"
    for _ in range(5):
        state, why = aimd_step(state, sample(160 * MiB), P, cap=cap)
        assert state.streams == ceiling, why


def test_cap_is_a_ceiling_applied_at_once() -> None:
    new, _ = aimd_step(link(streams=12), sample(100 * MiB), P, cap=5)
    assert new.streams == 5
    new, _ = aimd_step(link(streams=12), LinkSample(NOW, 2.0, 0), P, cap=5)  # even when idle
    assert new.streams == 5


def test_aimd_ema_and_success_follow_alpha() -> None:
    new, _ = aimd_step(link(ema=100.0, success=1.0), LinkSample(NOW, 1.0, 200, files=1, failed=1), P)
    assert new.ema_bps == pytest.approx(150.0)
    assert new.success == pytest.approx(0.75)
    first, _ = aimd_step(LinkState("a", "b"), LinkSample(NOW, 2.0, 400, files=2), P)
    assert first.ema_bps == pytest.approx(200.0), "the first sample seeds the EMA"
    assert first.updated_at == NOW


# -- rank_sources ----------------------------------------------------------------------------------


def ep(host: str) -> Endpoint:
    return Endpoint(host, b"/srv/d")


DST = ep("dst")


def links(**ema: float) -> dict[tuple[str, str], LinkState]:
    return {(h, "dst"): LinkState(h, "dst", ema_bps=v) for h, v in ema.items()}


def order(ranked: list[RankedSource]) -> list[str]:
    return [r.source.host for r in ranked]


@pytest.mark.parametrize(
    ("link_states", "healths", "failures", "expected"),
    [
        (links(a=50 * MiB, b=200 * MiB), {"a": hh(), "b": hh()}, {}, ["b", "a"]),
        (links(a=100 * MiB, b=100 * MiB), {"a": hh(cpu=80), "b": hh(cpu=5)}, {}, ["b", "a"]),
        (links(a=100 * MiB, b=100 * MiB), {"a": hh(disk=80), "b": hh(disk=5)}, {}, ["b", "a"]),
        (links(a=100 * MiB, b=100 * MiB), {"a": hh(tx_mbps=700), "b": hh()}, {}, ["b", "a"]),
        (links(a=100 * MiB, b=100 * MiB), {"a": hh(), "b": hh()}, {"a": [NOW - 60, NOW - 30]}, ["b", "a"]),
        (links(a=100 * MiB, b=100 * MiB), {"a": hh(), "b": hh()}, {"b": [NOW - 7200]}, ["a", "b"]),  # by name
        (links(a=100 * MiB, b=100 * MiB), {"a": hh(), "b": hh()}, {"a": [NOW - 7200]}, ["a", "b"]),  # old
        (links(a=900 * MiB, b=10 * MiB), {"a": hh(at=NOW - 60), "b": hh()}, {}, ["b", "a"]),  # stale last
        (links(a=900 * MiB, b=10 * MiB), {"a": hh(disk=99), "b": hh()}, {}, ["b", "a"]),  # blocked last
        (links(a=900 * MiB, b=10 * MiB), {"b": hh()}, {}, ["b", "a"]),  # no health at all
        (links(a=100 * MiB), {"a": hh(cpu=80), "b": hh(cpu=5)}, {}, ["b", "a"]),  # fan-out: new replica
        (links(a=10 * MiB, x=200 * MiB), {"a": hh(), "b": hh()}, {}, ["b", "a"]),  # unmeasured = best known
        ({("a", "dst"): LinkState("a", "dst", ema_bps=MiB, success=0.5), **links(b=MiB)},
         {"a": hh(), "b": hh()}, {}, ["b", "a"]),  # the link's own success rate counts
    ],
    ids=["faster", "less-loaded", "less-disk-busy", "less-net-busy", "fewer-failures", "tie-by-name",
         "old-failures-forgotten", "stale",
         "blocked", "no-health", "unmeasured-new-replica", "unmeasured-optimistic", "link-success"],
)
def test_rank_sources_prefers_fast_idle_reliable(link_states: dict[tuple[str, str], LinkState],
                                                 healths: dict[str, HostHealth | None],
                                                 failures: dict[str, list[float]], expected: list[str]) -> None:
    ranked = rank_sources([ep("a"), ep("b")], DST, link_states, healths, failures, NOW)
    assert order(ranked) == expected


def test_rank_sources_reasons_say_why() -> None:
    ranked = rank_sources([ep("a"), ep("c")], DST, links(a=100 * MiB), {"a": hh(), "c": hh(disk=99)},
                          {"a": [NOW - 10]}, NOW)
    a, c = ranked
    assert a.reason.startswith("a: 100.0 MiB/s measured to dst")
    assert "1 failures in the last 3600s" in a.reason
    assert not a.blocked
    assert c.blocked
    assert "assumed (not measured yet)" in c.reason
    assert "blocked: c disk 99% busy" in c.reason


def test_rank_sources_ignores_links_to_other_destinations() -> None:
    states = {("a", "elsewhere"): LinkState("a", "elsewhere", ema_bps=1e12), **links(b=10 * MiB)}
    ranked = rank_sources([ep("a"), ep("b")], DST, states, {"a": hh(cpu=60), "b": hh(cpu=5)}, {}, NOW)
    assert order(ranked) == ["b", "a"]


# -- priorities ------------------------------------------------------------------------------------

AGING = 300.0


@pytest.mark.parametrize(
    ("prio", "waited", "aging", "expected"),
    [
        (Priority.LOW, 0.0, AGING, 0.0),
        (Priority.HIGH, 0.0, AGING, 2.0),
        (Priority.LOW, 450.0, AGING, 1.5),
        (Priority.NORMAL, 900.0, AGING, 4.0),
        (Priority.LOW, 900.0, 0.0, 0.0),  # aging disabled
        (Priority.HIGH, -5.0, AGING, 2.0),  # clock skew: never below its level
    ],
)
def test_effective_priority(prio: Priority, waited: float, aging: float, expected: float) -> None:
    assert effective_priority(prio, NOW - waited, NOW, aging) == pytest.approx(expected)


def qjob(job_id: int, created: float, priority: Priority = Priority.NORMAL) -> Job:
    return Job(id=job_id, state=JobState.QUEUED, source=ep("a"), destination=ep("b"), created_at=created,
               options=JobOptions(priority=priority))


@pytest.mark.parametrize(
    ("low_waited", "expected"),
    [(0.0, [2, 1]), (2 * AGING - 1, [2, 1]), (2 * AGING + 1, [1, 2]), (10 * AGING, [1, 2])],
    ids=["fresh", "just-before-aging", "just-after-aging", "long-wait"],
)
def test_low_job_overtakes_fresh_high_after_aging(low_waited: float, expected: list[int]) -> None:
    low, high = qjob(1, NOW - low_waited, Priority.LOW), qjob(2, NOW, Priority.HIGH)
    got = order_queue([low, high], AGING)
    assert [j.id for j in got] == expected


@pytest.mark.parametrize(
    ("levels", "waited", "expected"),
    [
        # (priority of jobs 1, 2, 3), (seconds each has waited), start order
        ((Priority.LOW, Priority.NORMAL, Priority.HIGH), (0.0, 0.0, 0.0), [3, 2, 1]),
        ((Priority.HIGH, Priority.HIGH, Priority.HIGH), (10.0, 30.0, 20.0), [2, 3, 1]),  # FIFO within a level
        ((Priority.NORMAL, Priority.HIGH, Priority.LOW), (AGING + 1, 0.0, 0.0), [1, 2, 3]),  # aged past high
        ((Priority.NORMAL, Priority.HIGH, Priority.LOW), (AGING - 1, 0.0, 0.0), [2, 1, 3]),
        ((Priority.LOW, Priority.NORMAL, Priority.HIGH), (AGING + 1, AGING + 1, 0.0), [2, 3, 1]),
        ((Priority.LOW, Priority.HIGH, Priority.NORMAL), (3 * AGING, AGING, 0.0), [1, 2, 3]),  # tie: older
    ],
)
def test_order_queue_by_job_priority(levels: tuple[Priority, ...], waited: tuple[float, ...],
                                     expected: list[int]) -> None:
    jobs = [qjob(i + 1, NOW - w, p) for i, (p, w) in enumerate(zip(levels, waited, strict=True))]
    assert [j.id for j in order_queue(jobs, AGING)] == expected


def test_order_queue_defaults_to_normal_and_fifo_within_a_level() -> None:
    jobs = [qjob(3, 30.0), qjob(1, 10.0), qjob(2, 10.0), qjob(4, 40.0, Priority.HIGH)]
    assert [j.id for j in order_queue(jobs, AGING)] == [4, 1, 2, 3]


def test_order_queue_without_aging_is_by_level_then_age() -> None:
    jobs = [qjob(1, 0.0, Priority.LOW), qjob(2, NOW)]
    assert [j.id for j in order_queue(jobs, 0.0)] == [2, 1]


def test_order_queue_matches_effective_priority_at_any_time() -> None:
    rng = random.Random(5)
    jobs = [qjob(i, rng.uniform(0, 5000), rng.choice(list(Priority))) for i in range(200)]
    got = order_queue(jobs, AGING)
    for now in (5000.0, 9000.0, 1e6):
        eff = [effective_priority(j.options.priority, j.created_at, now, AGING) for j in got]
        assert all(x >= y - 1e-9 for x, y in itertools.pairwise(eff)), now


# -- throttle_decision -----------------------------------------------------------------------------

LINK = LinkState("a", "b", ema_bps=100 * MiB)


def throttle(src: HostHealth | None = None, dst: HostHealth | None = None, cap: int = 0, paused: bool = False,
             ceiling: int = 0, rate_bps: float | None = None, link_state: LinkState = LINK) -> ThrottleDecision:
    return throttle_decision(src if src is not None else hh(), dst if dst is not None else hh(), T, cap,
                             link_state, now=NOW, paused=paused, ceiling=ceiling, rate_bps=rate_bps)


@pytest.mark.parametrize(
    ("kw", "action", "bwlimit", "words"),
    [
        ({}, Throttle.HOLD, 0, "running: both hosts under the start thresholds"),
        ({"src": hh(cpu=97)}, Throttle.SLOW, 50 * MiB, "slow to 50.0 MiB/s: a CPU 97% busy (limit 95%)"),
        ({"dst": hh(disk=99), "cap": 40 * MiB}, Throttle.SLOW, 20 * MiB, "b disk 99% busy (sdb, limit 98%)"),
        ({"dst": hh(disk=99), "cap": int(1.5 * MiB)}, Throttle.PAUSE, int(1.5 * MiB), "pause: b disk 99%"),
        ({"src": hh(cpu=97), "link_state": LinkState("a", "b")}, Throttle.PAUSE, 0, "pause: a CPU 97%"),
        ({"src": hh(load=24)}, Throttle.SLOW, 50 * MiB, "a load 3.0 per core (limit 2.5)"),
        ({"src": hh(tx_mbps=960)}, Throttle.SLOW, 50 * MiB, "a network 96% used sending"),
        ({"src": hh(cpu=90), "cap": 8 * MiB}, Throttle.HOLD, 8 * MiB, "staying at 8.0 MiB/s until under"),
        ({"src": hh(cpu=90), "paused": True}, Throttle.HOLD, 0, "staying paused until under"),
        ({"src": hh(cpu=97), "paused": True}, Throttle.HOLD, 0, "still paused: a CPU 97%"),
        ({"paused": True, "cap": 4 * MiB}, Throttle.RESUME, 4 * MiB, "resume: both hosts under"),
        ({"cap": 8 * MiB, "rate_bps": 8 * MiB}, Throttle.RESUME, 10 * MiB, "speed up to 10.0 MiB/s"),
        ({"cap": 8 * MiB, "rate_bps": 2 * MiB}, Throttle.RESUME, 0, "back to full speed"),
        ({"cap": 8 * MiB, "rate_bps": 8 * MiB, "ceiling": 9 * MiB}, Throttle.RESUME, 9 * MiB, "back to 9.0 MiB/s"),
        ({"cap": 9 * MiB, "ceiling": 9 * MiB}, Throttle.HOLD, 9 * MiB, "running"),  # the job's own limit
        ({"cap": 0, "ceiling": 9 * MiB, "src": hh(cpu=97)}, Throttle.SLOW, int(4.5 * MiB), "slow to 4.5 MiB/s"),
        ({"dst": hh(free=GiB // 2)}, Throttle.PAUSE, 0, "b has 512.0 MiB free on /srv, under the 1.0 GiB margin"),
        ({"dst": hh(free=GiB // 2), "paused": True}, Throttle.HOLD, 0, "under the 1.0 GiB margin"),
        ({"src": hh(at=NOW - 30, cpu=99), "cap": 8 * MiB}, Throttle.HOLD, 8 * MiB, "a health is 30s old"),
    ],
    ids=["calm", "hot-src-uncapped", "hot-dst-capped", "hot-to-pause", "hot-no-rate", "hot-load", "hot-net",
         "warm-capped", "warm-paused", "hot-paused", "calm-paused", "calm-speed-up", "calm-cap-not-binding",
         "speed-up-to-ceiling", "own-limit-kept", "slow-from-ceiling", "dst-full", "dst-full-paused", "stale"],
)
def test_throttle_table(kw: dict[str, Any], action: Throttle, bwlimit: int, words: str) -> None:
    d = throttle(**kw)
    assert (d.action, d.bwlimit) == (action, bwlimit), d.reason
    assert words in d.reason


def test_throttle_free_space_pause_looks_at_the_jobs_export() -> None:
    full = DiskUsage(b"/full", 100 * GiB, 100 * GiB - MiB, MiB, 100.0)
    roomy = DiskUsage(b"/roomy", 100 * GiB, 0, 100 * GiB, 0.0)
    dst = hh(exports=(full, roomy))
    pick = lambda p: throttle_decision(hh(), dst, T, 0, LINK, now=NOW, dst_path=p).action  # noqa: E731
    assert pick(b"/roomy/d") is Throttle.HOLD
    assert pick(b"/full/d") is Throttle.PAUSE
    assert pick(None) is Throttle.PAUSE, "without a path the tightest export decides"


def simulate(cpus: list[float], cap: int = 0, paused: bool = False) -> list[Throttle]:
    """Apply each decision as the engine would, on a link that carries at most 100 MiB/s."""
    actions = []
    for cpu in cpus:
        d = throttle(src=hh(cpu=cpu), cap=cap, paused=paused, rate_bps=float(min(cap or 100 * MiB, 100 * MiB)))
        actions.append(d.action)
        if d.action is Throttle.PAUSE:
            paused = True
        elif d.action is Throttle.RESUME:
            paused = False
        if d.action is not Throttle.PAUSE:
            cap = d.bwlimit
    return actions


@pytest.mark.parametrize(
    ("cpus", "start_cap", "paused", "never"),
    [
        ([94.0, 96.0] * 6, 0, False, Throttle.RESUME),  # around the high-water mark: slows, never bounces up
        ([84.0, 86.0] * 6, 32 * MiB, False, Throttle.SLOW),  # around the start threshold: speeds up only
        ([84.0, 86.0] * 6, 0, False, Throttle.SLOW),
        ([96.0, 94.0] * 6, 32 * MiB, True, Throttle.RESUME),  # paused stays paused in the band
    ],
    ids=["around-high", "around-start-capped", "around-start-uncapped", "paused-around-high"],
)
def test_throttle_hysteresis_no_flapping(cpus: list[float], start_cap: int, paused: bool, never: Throttle) -> None:
    actions = simulate(cpus, start_cap, paused)
    assert never not in actions, actions
    assert not ({Throttle.SLOW, Throttle.PAUSE} & set(actions) and Throttle.RESUME in actions), actions


def test_throttle_round_trip_slow_then_recover_to_full_speed() -> None:
    actions = simulate([97.0, 97.0, 90.0, 90.0] + [50.0] * 12)
    assert actions[:4] == [Throttle.SLOW, Throttle.SLOW, Throttle.HOLD, Throttle.HOLD]
    assert Throttle.RESUME in actions[4:]
    assert actions[-1] is Throttle.HOLD, "back at full speed, nothing left to lift"


def test_throttle_never_exceeds_the_jobs_own_limit() -> None:
    for cap in (MiB, 5 * MiB, 9 * MiB, 20 * MiB):
        for cpu in (10.0, 90.0, 97.0):
            d = throttle(src=hh(cpu=cpu), cap=cap, ceiling=9 * MiB, rate_bps=float(cap))
            assert d.bwlimit <= 9 * MiB, (cap, cpu, d)


# -- decision history ------------------------------------------------------------------------------


def test_decision_kinds_are_the_explain_vocabulary() -> None:
    assert [k.value for k in DecisionKind] == ["wait", "start", "slow", "pause", "resume", "switch_source",
                                             "streams", "fail", "done", "cancel", "schedule"]
    assert [a.kind for a in Throttle] == [None, DecisionKind.SLOW, DecisionKind.PAUSE, DecisionKind.RESUME]


@pytest.mark.parametrize(
    ("last", "expected"),
    [
        (None, False),
        (DecisionRecord(1, NOW - 5, DecisionKind.WAIT, "waiting: host1 disk 93% busy"), True),
        (DecisionRecord(1, NOW - 5, DecisionKind.WAIT, "waiting: host1 disk 95.5% busy"), True),  # figures only
        (DecisionRecord(1, NOW - 5, DecisionKind.WAIT, "waiting: host1 CPU 93% busy"), False),
        (DecisionRecord(1, NOW - 5, DecisionKind.WAIT, "waiting: host2 disk 93% busy"), False),
        (DecisionRecord(1, NOW - 5, DecisionKind.START, "waiting: host1 disk 93% busy"), False),
        (DecisionRecord(2, NOW - 5, DecisionKind.WAIT, "waiting: host1 disk 93% busy"), False),
    ],
    ids=["first", "same", "new-figure", "new-blocker", "other-host", "new-kind", "other-job"],
)
def test_decision_record_repeats(last: DecisionRecord | None, expected: bool) -> None:
    new = DecisionRecord(1, NOW, DecisionKind.WAIT, "waiting: host1 disk 93% busy", {"host": "host1", "busy": 93.0})
    assert new.repeats(last) is expected
