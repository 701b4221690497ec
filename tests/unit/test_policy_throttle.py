"""Tests for zcrepl.controller.throttle.throttle_decision: slowing, pausing and speeding up a running transfer
with hysteresis."""

from __future__ import annotations

from typing import Any

import pytest
from policyhelpers import NOW, GiB, MiB, T, hh

from zcrepl.controller.policy import LinkState
from zcrepl.controller.throttle import Throttle, ThrottleDecision, throttle_decision
from zcrepl.core.types import DiskUsage, HostHealth

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
