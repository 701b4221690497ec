"""Tests for zcrepl.controller.validate: what the controller refuses, and what it clamps, at its edge."""

from __future__ import annotations

import math
from dataclasses import fields, replace

import pytest

from zcrepl.controller import validate as v
from zcrepl.controller.registry import HealthHistory
from zcrepl.core.errors import InvalidArgument
from zcrepl.core.types import (
    SKIPPED_LISTED,
    AgentInfo,
    DiskIO,
    DiskUsage,
    HostHealth,
    JobOptions,
    NetIO,
    Phase,
    Role,
    Skipped,
    TransferReport,
)
from zcrepl.core.watchtypes import WatchStatus
from zcrepl.proto.convert import health_from_pb, health_to_pb

GOOD = AgentInfo(name="hostA", grpc_address="10.0.0.1:7421", data_address="10.0.0.1:7422",
                 exports=(b"/srv/data", b"/srv/\xff odd"), version="0.1.0", pid=7, hostname="hostA.example")


# -- agent names --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["hostA", "h", "a.b-c_d", "0x", "x" * 253, "host.example.com"])
def test_names_that_pass(name: str) -> None:
    assert v.host_name(name) == name


@pytest.mark.parametrize("name", ["", "x" * 254, "x" * 1_000_000, "host\n", "host ", " host", "a b", "h\u202eA",
                                  "h\u00e9", "-h", ".h", "h/x", "h:x", "h\x00", "h\t"])
def test_names_that_are_refused_with_the_rule(name: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        v.host_name(name)
    msg = str(e.value)
    assert "1 to 253 characters from A-Z, a-z, 0-9, '.', '_' and '-'" in msg
    assert len(msg) < 400 and msg.isprintable()  # a million characters are not echoed back, controls neither


def test_a_request_cannot_name_too_many_agents() -> None:
    with pytest.raises(InvalidArgument, match="at most 10000"):
        v.host_names(["h"] * 10_001)


# -- addresses ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("addr", ["10.0.0.1:7422", "127.0.0.1:1", "[::1]:7422", "[fe80::1%eth0]:7422",
                                  "host.example:65535", "h-1:80", "localhost:7421", "data_net:7422"])
def test_addresses_that_pass(addr: str) -> None:
    assert v.address(addr, "data address") == addr


@pytest.mark.parametrize(("addr", "why"), [
    ("", "HOST:PORT"), ("host", "HOST:PORT"), ("host:", "HOST:PORT"), ("host:0", "HOST:PORT"),
    ("host:65536", "HOST:PORT"), ("host:99999999999999999999", "HOST:PORT"), ("host:\u0661\u0662", "HOST:PORT"),
    (":7422", "DNS name"), ("evil\n:7422", "DNS name"), ("a b:1", "DNS name"), ("x" * 254 + ":1", "DNS name"),
    ("-h:1", "DNS name"), ("h..x:1", "DNS name"), ("999.1.1.1:1", "looks like an IP address"),
    ("0.0.0.0:7422", "unspecified"), ("[::]:7422", "unspecified"), ("224.0.0.1:1", "multicast"),
    ("[nope]:1", "not an IPv6 address"), ("::1:7422", "DNS name"),
])
def test_addresses_that_are_refused(addr: str, why: str) -> None:
    with pytest.raises(InvalidArgument, match=why):
        v.address(addr, "hostA's data address")


# -- registrations ------------------------------------------------------------------------------------


def test_a_sound_registration_passes() -> None:
    assert v.agent_info(GOOD) is GOOD
    assert v.agent_info(replace(GOOD, grpc_address="")) is not None  # a gRPC address is optional


@pytest.mark.parametrize(("change", "why"), [
    ({"name": "bad name"}, "agent name 'bad name' is refused"),
    ({"data_address": ""}, "hostA's data address '' is refused"),
    ({"data_address": "0.0.0.0:7422"}, "unspecified"),
    ({"grpc_address": "evil"}, "hostA's gRPC address 'evil' is refused"),
    ({"exports": tuple(f"/e{i}".encode() for i in range(65))}, "65 exports; at most 64"),
    ({"exports": (b"relative",)}, "absolute, canonical path"),
    ({"exports": (b"/a/../b",)}, "absolute, canonical path"),
    ({"exports": (b"/a/",)}, "absolute, canonical path"),
    ({"exports": (b"/" + b"a" * 5000,)}, "absolute, canonical path"),
    ({"exports": (b"/a", b"/a")}, "the same export twice"),
    ({"version": "v" * 65}, "hostA's version"),
    ({"hostname": "evil\nline"}, "hostA's hostname"),
])
def test_a_registration_out_of_bounds_is_refused(change: dict, why: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(InvalidArgument, match=why):
        v.agent_info(replace(GOOD, **change))


# -- job options --------------------------------------------------------------------------------------


def test_options_in_range_pass() -> None:
    o = JobOptions(streams=16, max_attempts=100, bwlimit=1 << 50)
    assert v.options(o) is o


@pytest.mark.parametrize(("o", "why"), [
    (JobOptions(streams=17), "streams 17 is refused: choose 0 \\(automatic\\) to 16"),
    (JobOptions(streams=-3), "cannot be negative"),
    (JobOptions(max_attempts=101), "max_attempts 101 is refused"),
    (JobOptions(bwlimit=(1 << 64) - 1), "bwlimit 18446744073709551615 is refused"),
    (JobOptions(bwlimit=-1), "cannot be negative"),
])
def test_options_out_of_range_are_refused(o: JobOptions, why: str) -> None:
    with pytest.raises(InvalidArgument, match=why):
        v.options(o)


def test_history_beyond_what_is_kept_means_all_of_it() -> None:
    assert v.history(10**9) == HealthHistory().maxlen and v.history(3) == 3


# -- health -------------------------------------------------------------------------------------------


def test_a_sane_sample_is_passed_through_untouched() -> None:
    h = HostHealth(sampled_at=1e9, cpu_percent=12.0, cpu_per_core=(10.0, 14.0), cpu_count=2, load1=0.5,
                   mem_total=8 << 30, mem_available=4 << 30, exports=(DiskUsage(b"/srv", 100, 50, 50, 50.0, "vda"),),
                   disks=(DiskIO("vda", 1.0, 2.0, 3.0),), nics=(NetIO("eth0", 1.0, 2.0, 1000),), data_nic="eth0")
    assert v.health(h) is h


def test_absurd_figures_are_clamped_into_range() -> None:
    big = (1 << 64) - 1
    h = HostHealth(sampled_at=math.inf, cpu_percent=math.nan, cpu_per_core=(-5.0, 1e9, math.nan), cpu_count=big,
                   load1=-1.0, mem_total=big, mem_available=big, swap_in_bps=math.inf, agent_rss=big,
                   open_fds=big, exports=(DiskUsage(b"/srv", big, big, big, 1e9, "d\u202eev"),),
                   disks=tuple(DiskIO(f"d{i}", math.nan, -1.0, 500.0) for i in range(300)),
                   nics=(NetIO("eth\n0", 1e30, 1.0, big),), data_nic="x" * 1000)
    c = v.health(h)
    assert c.sampled_at == v.MAX_TIME and c.cpu_percent == 0.0 and c.cpu_per_core == (0.0, 100.0, 0.0)
    assert c.cpu_count == v.MAX_CPUS and c.load1 == 0.0 and c.swap_in_bps == v.MAX_RATE
    assert c.mem_total == c.mem_available == c.agent_rss == v.MAX_BYTES and c.open_fds == v.MAX_COUNT
    (e,) = c.exports
    assert (e.total, e.percent, e.device) == (v.MAX_DISK, 100.0, "d?ev")
    assert len(c.disks) == v.MAX_DEVICES and c.disks[0] == DiskIO("d0", 0.0, 0.0, 100.0)
    assert c.nics == (NetIO("eth?0", v.MAX_RATE, 1.0, v.MAX_SPEED_MBPS),) and c.data_nic == "x" * 64
    # Every integer survives the history's doubles and the trip back into its protobuf field.
    hist = HealthHistory(maxlen=2)
    hist.append(c)
    (back,) = hist.last(1)
    assert health_from_pb(health_to_pb(back)).mem_total == v.MAX_BYTES


def test_every_scalar_health_figure_has_a_range() -> None:
    scalars = {f.name for f in fields(HostHealth) if f.type in ("float", "int")}
    assert scalars == set(v._FLOATS) | set(v._INTS)


def test_available_memory_never_exceeds_the_total() -> None:
    assert v.health(HostHealth(mem_total=10, mem_available=20)).mem_available == 10


# -- reports and watch-rule statuses -------------------------------------------------------------------


def test_a_report_keeps_its_skipped_list_bounded_and_its_text_printable() -> None:
    r = TransferReport(1, 1, Role.SENDER, Phase.DONE, error="bad\x1b[2Jthing" + "x" * 5000,
                       skipped=tuple(Skipped(b"p" * 70_000, "why\n") for _ in range(SKIPPED_LISTED + 5)))
    c = v.report(r)
    assert len(c.skipped) == SKIPPED_LISTED and len(c.skipped[0].path) == 4096 and c.skipped[0].reason == "why?"
    assert c.error.startswith("bad?[2Jthing") and len(c.error) == v.MAX_TEXT
    ok = TransferReport(1, 1, Role.SENDER, Phase.DONE, skipped=(Skipped(b"a", "fine"),))
    assert v.report(ok) is ok


def test_watch_statuses_are_clamped() -> None:
    (st,) = v.watch_statuses([WatchStatus(1, 1, lag=math.nan, last_error="e\u202e" * 3000, warning="w\n")])
    assert st.lag == 0.0 and len(st.last_error) == v.MAX_TEXT and "\u202e" not in st.last_error
    assert st.warning == "w?"
