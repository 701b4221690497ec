"""The engine's pacing decisions (controller/effects_pacing.py) as tables: the send's streams and compression from
both ends and the link, the load policy's throttle orders, a link's new stream target; without asyncio, a store or
agents."""

from __future__ import annotations

from typing import Any

import pytest

from zcrepl.controller.compression import CompressPolicy
from zcrepl.controller.effects import Effect, FailAttempt, Log, Order, Paced, Record, Sending
from zcrepl.controller.effects_pacing import Ends, link_stepped, ready, throttled
from zcrepl.controller.links import LinkStep
from zcrepl.controller.policy import DecisionKind, LinkState, Thresholds
from zcrepl.controller.runs import Run
from zcrepl.controller.scheduler import Policy, Usage
from zcrepl.core.config import HostLimit
from zcrepl.core.types import (
    Compress,
    DiskUsage,
    Endpoint,
    HostHealth,
    Job,
    JobOptions,
    JobState,
    SendOrder,
    ThrottleOrder,
    TransferStats,
)

GiB, MiB = 1 << 30, 1 << 20
SRC, DST = Endpoint("hostA", b"/a"), Endpoint("hostB", b"/b")
NOW = 1000.0
ZSTD = 200 * MiB  # what each agent's core compresses


def health(cores: int = 16, cpu: float = 0.0) -> HostHealth:
    return HostHealth(sampled_at=NOW, cpu_percent=cpu, cpu_count=cores,
                      exports=(DiskUsage(b"/", 1000 * GiB, 100 * GiB, 900 * GiB, 10.0),))


def job(**options: Any) -> Job:
    return Job(1, JobState.RUNNING, SRC, DST, attempts=1, options=JobOptions(**options))


def run(**kw: Any) -> Run:
    return Run(1, 1, b"t" * 32, NOW + 10, SRC, **{"receiver_ready": True, **kw})


def ends(link: LinkState | None = None, rates: tuple[int, int] = (ZSTD, ZSTD), src_cores: int = 16,
         used: int = 0) -> Ends:
    return Ends("10.0.0.2:7001", (health(src_cores), health()), rates, link, Usage({"hostA": used}, {}))


SLOW_LINK = LinkState("hostA", "hostB", streams=8, ema_bps=1 * MiB)
LIMITED = Policy(host_limits={"hostA": HostLimit(streams=4)})


@pytest.mark.parametrize(
    ("options", "e", "policy", "streams", "compress", "why"),
    [
        ({}, ends(), Policy(), 16, False, "not compressed: compress = auto: the link's throughput is not measured"),
        ({}, ends(LinkState("hostA", "hostB", streams=2, ema_bps=900 * MiB)), Policy(), 2, False,
         "not compressed: compress = auto: the link is fast"),
        ({}, ends(SLOW_LINK), Policy(), 8, True, "compressed: compress = auto: the link moved 1.0 MiB/s, far below"),
        ({"streams": 3}, ends(SLOW_LINK, src_cores=2), Policy(), 2, True, "compressed: compress = auto"),
        ({}, ends(used=3), LIMITED, 1, False, "not compressed"),  # hostA's limit of 4, 3 in use by others
        ({"compress": Compress.ON}, ends(rates=(ZSTD, 0)), Policy(), 16, False,
         "not compressed: hostB's agent cannot compress"),
        ({"compress": Compress.OFF}, ends(SLOW_LINK), Policy(), 8, False, "not compressed: the job asked for none"),
    ],
    ids=["unmeasured", "fast-link-target", "slow-link", "few-cores", "host-limit", "old-agent", "no-compress"],
)
def test_ready(options: dict[str, Any], e: Ends, policy: Policy, streams: int, compress: bool, why: str) -> None:
    """The destination is ready: streams from the free cores within the limits and the link's target, then zstd or
    not, on one SendOrder."""
    j = job(**options)
    fx = ready(j, run(), NOW, e, policy, CompressPolicy())
    assert isinstance(fx[0], Log) and (fx[0].fields["streams"], fx[0].fields["compress"]) == (streams, compress)
    assert isinstance(fx[2], Record) and fx[2].details == {"compress": compress} and fx[2].reason.startswith(why)
    assert fx[3:] == [Order("hostA", SendOrder(1, 1, b"t" * 32, b"/a", JobOptions(
        streams=streams, compress=Compress.ON if compress else Compress.OFF, dry_run=j.options.dry_run),
        "hostB", "10.0.0.2:7001", b"/b")), Sending(1, streams, compress, NOW)]


def test_ready_without_both_ends_fails_the_attempt() -> None:
    assert ready(job(), run(), NOW, None, Policy(), CompressPolicy()) == [
        FailAttempt(1, "hostA went offline before the transfer started", True, TransferStats())]


T = Thresholds()
SENT = TransferStats(bytes_done=200 * MiB)  # 100 MiB/s over the 2 s since the last look


def sending(**kw: Any) -> Run:
    return run(**{"sending": True, "rate_at": NOW - 2, "progress": SENT, **kw})


@pytest.mark.parametrize(
    ("r", "src_cpu", "expected"),
    [
        (sending(), 10.0, [Paced(1, NOW, 200 * MiB, 0, False)]),  # calm: sampled only
        (sending(), 97.0, [Paced(1, NOW, 200 * MiB, 50 * MiB, False),
                           Order("hostA", ThrottleOrder(1, 1, 50 * MiB, False, "slow to 50.0 MiB/s: hostA CPU 97% "
                                                                               "busy (limit 95%)")),
                           Record(1, DecisionKind.SLOW, "slow to 50.0 MiB/s: hostA CPU 97% busy (limit 95%)",
                                  {"bwlimit": 50 * MiB, "paused": False})]),
        (sending(paused=True), 10.0, [Paced(1, NOW, 200 * MiB, 0, False),
                                      Order("hostA", ThrottleOrder(1, 1, 0, False, "resume: both hosts under the "
                                                                                   "start thresholds")),
                                      Record(1, DecisionKind.RESUME, "resume: both hosts under the start thresholds",
                                             {"bwlimit": 0, "paused": False})]),
        (sending(paused=True), 97.0, [Paced(1, NOW, 200 * MiB, 0, True)]),  # still paused
        (sending(rate_at=NOW - 1.5), 97.0, []),  # looked at too recently
        (run(), 97.0, []),  # not sending yet
    ],
    ids=["calm", "hot-slows", "calm-resumes", "hot-stays-paused", "too-soon", "not-sending"],
)
def test_throttled(r: Run, src_cpu: float, expected: list[Effect]) -> None:
    hosts = {"hostA": health(cores=8, cpu=src_cpu), "hostB": health()}
    fx = throttled([r], {1: job()}, hosts.get, T, NOW)
    assert [e for e in fx if not isinstance(e, Log)] == expected
    assert [e.fields["action"] for e in fx if isinstance(e, Log)] == [e.kind.value for e in expected
                                                                      if isinstance(e, Record)]


def test_throttled_without_thresholds_does_nothing() -> None:
    assert throttled([sending()], {1: job()}, {"hostA": health(cpu=97.0)}.get, None, NOW) == []


def test_link_stepped() -> None:
    up = LinkStep(LinkState("hostA", "hostB", streams=3), 2, "streams 2 → 3")
    assert link_stepped(1, None) == [] and link_stepped(1, LinkStep(up.state, 3, "held")) == []
    fx = link_stepped(1, up)
    assert fx[0] == Record(1, DecisionKind.STREAMS, "streams 2 → 3 (the target for the next jobs on this link)",
                           {"streams": 3}, every=True)
    assert isinstance(fx[1], Log) and fx[1].fields == {"link": "hostA→hostB", "streams": 3, "reason": "streams 2 → 3"}
