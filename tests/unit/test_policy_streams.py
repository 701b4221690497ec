"""Tests for zcrepl.controller.policy's streams: how many a job starts with, and AIMD on a link."""

from __future__ import annotations

from dataclasses import replace

import pytest
from policyhelpers import NOW, KiB, MiB, hh

from zcrepl.controller.policy import MAX_STREAMS, AimdParams, LinkSample, LinkState, aimd_step, choose_streams
from zcrepl.core.types import HostHealth

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
