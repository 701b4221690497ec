"""Throttling running transfers: slow down, pause or resume a sender as either end crosses its high-water
marks, with hysteresis (resume only once both ends are back under the start thresholds). Pure, like
:mod:`zcrepl.controller.policy`, whose host figures it uses."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from zcrepl.controller.policy import (
    DecisionKind,
    LinkState,
    Thresholds,
    export_for,
    free_margin,
    over,
    rate,
    size,
    stale,
)
from zcrepl.core.paths import show
from zcrepl.core.types import HostHealth, Role


class Throttle(enum.Enum):
    HOLD = "hold"  # keep the current rate (or stay paused); nothing to record
    SLOW = "slow"
    PAUSE = "pause"
    RESUME = "resume"  # from a pause, or raising a cap this policy set

    @property
    def kind(self) -> DecisionKind | None:
        """The explain-history kind of this action; None for HOLD (nothing happened)."""
        return None if self is Throttle.HOLD else DecisionKind(self.value)


@dataclass(frozen=True)
class ThrottleDecision:
    action: Throttle
    bwlimit: int  # bytes/s the sender may push from now on; 0 = unlimited
    reason: str


def throttle_decision(src_health: HostHealth | None, dst_health: HostHealth | None, thresholds: Thresholds,
                      current_bwlimit: int, link_state: LinkState, *, now: float, paused: bool = False,
                      ceiling: int = 0, rate_bps: float | None = None, dst_path: bytes | None = None,
                      src_path: bytes | None = None) -> ThrottleDecision:
    """What a running (or paused) transfer on ``link_state`` should do now.

    Hot (either end over a high-water mark): slow to ``slow_factor`` x the current cap (or the measured
    rate when uncapped); pause when that is under ``min_bwlimit`` or there is no rate to scale from.
    The destination's export (the one holding ``dst_path``; the tightest when None) falling under the
    free-space margin pauses at once.
    Warm (over a start threshold, under every high-water mark): hold; this band is the hysteresis.
    Calm (both ends at or under the start thresholds): resume if paused; raise a cap by ``speedup_factor``,
    or lift it to ``ceiling`` (the job's own bwlimit, 0 = none) once the measured rate ``rate_bps`` (default
    the link's EMA) no longer reaches 80% of it, since then the cap is not what limits the transfer.
    Missing or stale health holds: the liveness checks deal with silent agents. The disks judged are the
    ones behind ``src_path`` and ``dst_path`` (:func:`disk_for`).
    """
    current = min(current_bwlimit or ceiling, ceiling or current_bwlimit)  # the job's own limit stays a ceiling
    measured = link_state.ema_bps if rate_bps is None else rate_bps
    ends = ((link_state.source, src_health, Role.SENDER, src_path),
            (link_state.destination, dst_health, Role.RECEIVER, dst_path))
    unknown = [w for n, h, _, _ in ends if (w := stale(n, h, now, thresholds.max_health_age))]
    if unknown or src_health is None or dst_health is None:
        return ThrottleDecision(Throttle.HOLD, current, "; ".join(unknown) + "; keeping the current rate")
    e = export_for(dst_health, dst_path)
    if e is not None and e.free <= free_margin(e, thresholds):
        why = (f"{link_state.destination} has {size(e.free)} free on {show(e.path)}, under the "
               f"{size(free_margin(e, thresholds))} margin")
        return ThrottleDecision(Throttle.HOLD if paused else Throttle.PAUSE, current, why)
    hot = [w for n, h, r, p in ends if h is not None for w in over(n, h, thresholds, r, high=True, path=p)]
    if hot:
        if paused:
            return ThrottleDecision(Throttle.HOLD, current, "still paused: " + "; ".join(hot))
        base = current or int(measured)
        cap = int(base * thresholds.slow_factor)
        if cap < thresholds.min_bwlimit:
            return ThrottleDecision(Throttle.PAUSE, current, "pause: " + "; ".join(hot))
        return ThrottleDecision(Throttle.SLOW, cap, f"slow to {rate(cap)}: " + "; ".join(hot))
    warm = [w for n, h, r, p in ends if h is not None for w in over(n, h, thresholds, r, high=False, path=p)]
    if warm:
        state = "paused" if paused else f"at {rate(current)}" if current else "at full speed"
        return ThrottleDecision(Throttle.HOLD, current, f"staying {state} until under the start thresholds: "
                                + "; ".join(warm))
    calm = "both hosts under the start thresholds"
    if paused:
        return ThrottleDecision(Throttle.RESUME, current, f"resume: {calm}")
    if current and current != ceiling:
        up = int(current * thresholds.speedup_factor)
        if measured < 0.8 * current or (ceiling and up >= ceiling):
            return ThrottleDecision(Throttle.RESUME, ceiling, f"back to {rate(ceiling) if ceiling else 'full speed'}: "
                                    f"{calm}")
        return ThrottleDecision(Throttle.RESUME, up, f"speed up to {rate(up)}: {calm}")
    return ThrottleDecision(Throttle.HOLD, current, f"running: {calm}")
