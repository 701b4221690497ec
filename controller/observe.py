"""What the engine tells an observer as it works; this base ignores everything.

The engine calls these at the moments figures change (one line each), so it needs no metrics library;
``zcrepl.controller.metrics.ControllerMetrics`` turns them into Prometheus counters and histograms.
"""

from __future__ import annotations

from collections.abc import Callable

from zcrepl.core.types import Job, TransferStats


class Observer:
    def attempt_started(self, source: str, destination: str) -> None:
        """An attempt of a job was ordered on the link ``source`` → ``destination``."""

    def attempt_ended(self, source: str, destination: str, stats: TransferStats, error: str) -> None:
        """An attempt ended with ``stats`` moved; ``error`` is "" for success."""

    def job_settled(self, job: Job) -> None:
        """A job's state was saved; it may have reached a final state."""

    def scheduling_pass(self, tick: Callable[[], None]) -> None:
        """Run one scheduling pass (``tick``)."""
        tick()
