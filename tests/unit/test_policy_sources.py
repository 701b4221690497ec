"""Tests for zcrepl.controller.policy.rank_sources: which copy a fan-out job reads from, and why."""

from __future__ import annotations

import pytest
from policyhelpers import NOW, MiB, ep, hh

from zcrepl.controller.policy import LinkState, RankedSource, rank_sources
from zcrepl.core.types import HostHealth

# -- rank_sources ----------------------------------------------------------------------------------


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
