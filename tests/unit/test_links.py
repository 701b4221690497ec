"""Tests for zcrepl.controller.links.LinkTracker: what reaches aimd_step from runs' progress and results."""

from __future__ import annotations

import pytest

from zcrepl.controller.links import LinkTracker
from zcrepl.core.types import TransferStats
from zcrepl.core.units import MiB

LINK = ("a", "b")
KEY = (1, 1)


def st(mib: float, files: int = 0, errors: int = 0) -> TransferStats:
    return TransferStats(bytes_done=int(mib * MiB), files_done=files, errors=errors)


def run(tracker: LinkTracker, windows: list[tuple[float, int, int]], *, streams: int = 4, key: tuple[int, int] = KEY,
        t0: float = 0.0, limited: bool = False, cap: int = 16) -> list[int]:
    """Start a run at t0 and feed one 2 s window per (MiB moved, files done, errors) entry; the streams target
    after each window (0 = the link has no state yet)."""
    tracker.start(key, st(0), streams, t0)
    mib = files = errors = 0.0
    out = []
    for i, (dm, df, de) in enumerate(windows, 1):
        mib, files, errors = mib + dm, files + df, errors + de
        tracker.sample(key, LINK, st(mib, int(files), int(errors)), t0 + 2.0 * i, limited=limited, cap=cap)
        out.append(tracker.target(LINK))
    return out


@pytest.mark.parametrize(
    ("windows", "expected"),
    [
        # the first window (ramp-up) is not fed; then steady throughput raises the target by one per window
        ([(10, 1, 0), (200, 10, 0), (200, 10, 0), (200, 10, 0)], [0, 5, 6, 7]),
        # a real drop (same file sizes) halves it
        ([(10, 1, 0), (200, 10, 0), (200, 10, 0), (40, 2, 0)], [0, 5, 6, 3]),
        # the same drop with files a magnitude smaller is not congestion: it keeps rising
        ([(10, 1, 0), (200, 10, 0), (200, 10, 0), (40, 200, 0)], [0, 5, 6, 7]),
        # failed files pull the success rate under 97%: cut, then hold while success recovers
        ([(10, 1, 0), (200, 10, 0), (200, 5, 5), (200, 10, 0)], [0, 5, 2, 2]),
        # idle windows (scan still running, nothing moved) hold
        ([(0, 0, 0), (0, 0, 0), (0, 0, 0)], [0, 0, 0]),
        ([(10, 1, 0), (200, 10, 0), (0, 0, 0), (200, 10, 0)], [0, 5, 5, 6]),
    ],
    ids=["rise", "drop", "smaller-files", "failures", "idle-new-link", "idle-hold"],
)
def test_windows_step_the_link(windows: list[tuple[float, int, int]], expected: list[int]) -> None:
    assert run(LinkTracker(window=2.0), windows) == expected


def test_samples_come_only_once_per_window() -> None:
    t = LinkTracker(window=2.0)
    t.start(KEY, st(0), 4, 0.0)
    assert t.sample(KEY, LINK, st(10), 1.0, limited=False) is None  # too early: no baseline change
    assert t.sample(KEY, LINK, st(20), 2.0, limited=False) is None  # first window: baseline only
    assert t.sample(KEY, LINK, st(60), 3.9, limited=False) is None
    step = t.sample(KEY, LINK, st(100), 4.0, limited=False)
    assert step is not None and step.changed and (step.before, step.state.streams) == (4, 5)
    assert step.state.ema_bps == pytest.approx(40 * MiB)  # (100 - 20) MiB over 2 s


def test_rate_limited_windows_are_not_fed() -> None:
    t = LinkTracker(window=2.0)
    assert run(t, [(10, 1, 0), (20, 1, 0), (20, 1, 0)], limited=True) == [0, 0, 0]
    assert t.states == {}


def test_cap_is_a_ceiling() -> None:
    assert run(LinkTracker(window=2.0), [(10, 1, 0)] + [(200, 10, 0)] * 5, cap=6) == [0, 5, 6, 6, 6, 6]


def test_a_new_runs_first_window_does_not_cut_the_link() -> None:
    t = LinkTracker(window=2.0)
    run(t, [(10, 1, 0), (200, 10, 0), (200, 10, 0)])  # target 6, EMA ~100 MiB/s
    # The next job ramps up slowly: its first window would read as a drop, but is skipped.
    assert run(t, [(5, 1, 0), (200, 10, 0)], key=(2, 1), t0=100.0) == [6, 7]


@pytest.mark.parametrize(
    ("failed", "limited", "last", "expected", "failures"),
    [
        (False, False, (200, 10, 0), 7, 0),  # a full last window counts
        (False, False, None, 6, 0),  # a sliver of a window (0.5 s) does not
        (True, False, (0, 0, 0), 3, 1),  # a failure while sending cuts
        (True, True, (0, 0, 0), 3, 1),  # even when rate limited
        (False, True, (100, 5, 0), 6, 0),
    ],
)
def test_end_of_run(failed: bool, limited: bool, last: tuple[float, int, int] | None, expected: int,
                    failures: int) -> None:
    t = LinkTracker(window=2.0)
    run(t, [(10, 1, 0), (200, 10, 0), (200, 10, 0)])  # target 6, at t=6 with 410 MiB, 21 files
    dm, df, de = last or (5, 0, 0)
    at = 8.0 if last else 6.5
    step = t.end(KEY, LINK, st(410 + dm, 21 + df, de), at, failed=failed, limited=limited)
    assert t.target(LINK) == expected
    assert (step is not None) == (expected != 6)
    assert len(t.failures.get("a", [])) == failures
    assert t.end(KEY, LINK, st(0), 9.0, failed=False, limited=False) is None  # settled once


def test_failures_are_remembered_per_source_for_an_hour() -> None:
    t = LinkTracker(window=2.0, failure_window=3600.0)
    for at in (0.0, 10.0, 4000.0):
        t.end((int(at), 1), ("a", "b"), st(0), at, failed=True, limited=False)
        if at == 10.0:
            assert t.failures == {"a": [0.0, 10.0]}
        assert t.target(("a", "b")) == 0  # no run was sending: nothing to fold into the link
    assert t.failures == {"a": [4000.0]}
