"""Per-link memory of the controller: throughput and success of each (source, destination) link, fed from
the agents' progress reports and attempt results, stepped by :func:`policy.aimd_step`.

State only, no I/O and no clock of its own (``now`` comes in): the engine calls :meth:`LinkTracker.start`
when a send begins, :meth:`~LinkTracker.sample` on its ticks and :meth:`~LinkTracker.end` when the attempt
settles, and reads :meth:`~LinkTracker.target` (a ceiling for the next job's streams) and ``states`` /
``failures`` (for ranking fan-out sources).

What is fed, and what is not:
- A run's samples are its own progress deltas over exactly the time since its previous sample, every
  ``window`` seconds. Its first window is skipped: connections ramp up and the scan may still be feeding the
  first files, so it would read as a throughput drop against the link's average and cut streams for nothing.
- A run held back by a bandwidth cap (the job's own ``bwlimit`` or the load policy's) or paused measures the
  cap, not the link: its windows are not fed (a failure still is).
- A run that succeeds folds its last window in if it lasted at least half a window (a sliver gives a noisy
  rate). A retryable failure of a run that was sending counts as a failed outcome on the link and, for
  source ranking, against its source host; a non-retryable one (a bad path) says nothing about the link.
- A live transfer keeps the stream count it started with (the data plane has no way to add or drop a
  connection mid-transfer); the adapted target applies to the next job on the link.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from zcrepl.controller.policy import MAX_STREAMS, AimdParams, LinkSample, LinkState, aimd_step
from zcrepl.core.types import TransferStats

RunKey = tuple[int, int]  # (job id, attempt)
Link = tuple[str, str]  # (source host, destination host)


@dataclass
class _Baseline:
    at: float
    bytes: int
    files: int
    errors: int
    streams: int
    warm: bool = False  # its first window has passed


@dataclass(frozen=True)
class LinkStep:
    """One :func:`aimd_step` the tracker took: the link after it, the streams before, and why."""

    state: LinkState
    before: int
    reason: str

    @property
    def changed(self) -> bool:
        return self.state.streams != self.before


@dataclass
class LinkTracker:
    window: float = 2.0  # seconds between samples of one run
    params: AimdParams = field(default_factory=AimdParams)
    failure_window: float = 3600.0  # failures older than this are forgotten (rank_sources' window)
    states: dict[Link, LinkState] = field(default_factory=dict)
    failures: dict[str, list[float]] = field(default_factory=dict)  # source host -> times its sends failed
    _runs: dict[RunKey, _Baseline] = field(default_factory=dict)

    def target(self, link: Link) -> int:
        """The link's adaptive stream target, or 0 when nothing was measured on it yet."""
        state = self.states.get(link)
        return state.streams if state is not None else 0

    def start(self, key: RunKey, stats: TransferStats, streams: int, now: float) -> None:
        """A send began with ``streams`` connections; ``stats`` is its progress so far."""
        self._runs[key] = _Baseline(now, stats.bytes_done, stats.files_done, stats.errors, streams)

    def forget(self, key: RunKey) -> None:
        self._runs.pop(key, None)

    def sample(self, key: RunKey, link: Link, stats: TransferStats, now: float, *, limited: bool,
               cap: int = MAX_STREAMS) -> LinkStep | None:
        """Fold the run's window into its link once ``window`` seconds have passed; None when no step."""
        b = self._runs.get(key)
        if b is None or now - b.at < self.window:
            return None
        s = self._window(b, stats, now)
        self._runs[key] = _Baseline(now, stats.bytes_done, stats.files_done, stats.errors, b.streams, warm=True)
        if not b.warm or limited:
            return None
        return self._step(link, b.streams, s, cap)

    def end(self, key: RunKey, link: Link, stats: TransferStats, now: float, *, failed: bool, limited: bool,
            cap: int = MAX_STREAMS) -> LinkStep | None:
        """The attempt settled: done (``failed`` False) or a retryable failure while sending."""
        b = self._runs.pop(key, None)
        if failed:
            times = [t for t in self.failures.get(link[0], ()) if now - t <= self.failure_window]
            self.failures[link[0]] = [*times, now]
        if b is None:
            return None
        s = self._window(b, stats, now)
        if failed:
            return self._step(link, b.streams, LinkSample(s.at, max(s.seconds, 1e-3), 0 if limited else s.bytes,
                                                          s.files, s.failed + 1), cap)
        if limited or not b.warm or s.seconds < self.window / 2:
            return None
        return self._step(link, b.streams, s, cap)

    @staticmethod
    def _window(b: _Baseline, stats: TransferStats, now: float) -> LinkSample:
        # max(0, ...): a retry's counters restart from zero; never feed a negative window.
        return LinkSample(at=now, seconds=now - b.at, bytes=max(0, stats.bytes_done - b.bytes),
                          files=max(0, stats.files_done - b.files), failed=max(0, stats.errors - b.errors))

    def _step(self, link: Link, streams: int, s: LinkSample, cap: int) -> LinkStep | None:
        state = self.states.get(link)
        if state is None:
            if s.bytes <= 0 and s.files + s.failed == 0:
                return None  # nothing measured: no state from an idle window
            # A link seen for the first time starts from the streams its first run actually used.
            state = LinkState(link[0], link[1], streams=streams)
        new, why = aimd_step(state, s, self.params, cap=cap)
        self.states[link] = new
        return LinkStep(new, state.streams, why)
