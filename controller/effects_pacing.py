"""The engine's pacing decisions as effects (issue 15, item 6; the effect types are in effects.py): the send that
starts once the destination is ready (its stream count and zstd or not, from both ends' health, the streams other
runs use and the link's measured state), the load policy's throttle orders on running sends (slow, pause, resume),
and the explain lines of a link's adaptive stream target. No I/O, no clock, no store: tested with tables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from zcrepl.controller.compression import CompressPolicy
from zcrepl.controller.effects import Effect, Log, Order, Paced, Record, send, unready
from zcrepl.controller.links import LinkStep
from zcrepl.controller.policy import DecisionKind, LinkState, Thresholds, choose_streams
from zcrepl.controller.runs import Run, job_fields, stream_caps
from zcrepl.controller.scheduler import Policy, Usage
from zcrepl.controller.throttle import Throttle, throttle_decision
from zcrepl.core.types import HostHealth, Job, ThrottleOrder

THROTTLE_EVERY = 2.0  # seconds between load decisions on a running transfer, and between its link samples


@dataclass(frozen=True)
class Ends:
    """What the send decision reads about an attempt's two agents and their link."""

    data_address: str  # where the destination's agent takes data connections
    health: tuple[HostHealth | None, HostHealth | None]  # (source, destination), stamped with when it arrived
    compress_rates: tuple[int, int]  # bytes/s each agent's zstd does per core (AgentInfo.compress_bps; 0: cannot)
    link: LinkState | None  # the link's AIMD state (its adaptive stream target, measured throughput); None: unmeasured
    usage: Usage  # streams the other running attempts use, per host and link


def ready(job: Job, run: Run, now: float, ends: Ends | None, policy: Policy,
          compression: CompressPolicy) -> list[Effect]:
    """The destination is ready for ``run``: the send with as many streams as both ends' free cores allow within
    the declared limits left after the other runs and the link's adaptive target (policy.choose_streams), zstd or
    not as ``compression`` decides from the link's throughput and both ends (controller/compression.py). ``ends``
    None: an end went offline meanwhile, and the attempt fails."""
    if ends is None:
        return unready(job, run)
    src, dst = run.source.host, job.destination.host
    caps = stream_caps(policy, ends.usage, src, dst, ends.link.streams if ends.link is not None else 0)
    streams, why = choose_streams(*ends.health, job.options.streams, caps)
    choice = compression.decide(job.options.compress, src, dst, ends.compress_rates,
                                ends.link.ema_bps if ends.link is not None else 0.0, ends.health, streams,
                                job.options.compress_level)
    return send(job, run, ends.data_address, now, streams, why, choice)


def throttled(runs: Iterable[Run], jobs: Mapping[int, Job], health: Callable[[str], HostHealth | None],
              thresholds: Thresholds | None, now: float) -> list[Effect]:
    """Every ``THROTTLE_EVERY`` seconds of a running send, the load policy's word on it (controller/throttle.py):
    slow down, pause or speed up as either end crosses its high-water marks, its source told so; a send that holds
    its rate is only sampled. ``health`` is a host's latest; no ``thresholds``, no throttling."""
    if thresholds is None:
        return []
    out: list[Effect] = []
    for run in runs:
        if not run.sending or now - run.rate_at < THROTTLE_EVERY:
            continue
        job = jobs[run.job_id]
        rate_bps = (run.progress.bytes_done - run.rate_bytes) / (now - run.rate_at)
        link = LinkState(run.source.host, job.destination.host, ema_bps=rate_bps)
        d = throttle_decision(health(run.source.host), health(job.destination.host), thresholds, run.bwlimit, link,
                              now=now, paused=run.paused, ceiling=job.options.bwlimit, rate_bps=rate_bps,
                              dst_path=job.destination.path, src_path=run.source.path)
        if d.action is Throttle.HOLD:
            out.append(Paced(job.id, now, run.progress.bytes_done, run.bwlimit, run.paused))
            continue
        paused = d.action is Throttle.PAUSE
        out += [Paced(job.id, now, run.progress.bytes_done, d.bwlimit, paused),
                Order(run.source.host, ThrottleOrder(job.id, run.attempt, d.bwlimit, paused, d.reason))]
        if (kind := d.action.kind) is not None:
            out.append(Record(job.id, kind, d.reason, {"bwlimit": d.bwlimit, "paused": paused}))
        out.append(Log("throttle", {**job_fields(job, run), "action": d.action.value, "bwlimit": d.bwlimit,
                                    "reason": d.reason}))
    return out


def link_stepped(job_id: int, step: LinkStep | None) -> list[Effect]:
    """A link's AIMD tracker took ``step`` on a sample of ``job_id``'s send: a new stream target is explained on the
    job (it is for the next jobs on the link) and logged; an unchanged one says nothing."""
    if step is None or not step.changed:
        return []
    return [Record(job_id, DecisionKind.STREAMS, f"{step.reason} (the target for the next jobs on this link)",
                   {"streams": step.state.streams}, every=True),
            Log("link streams", {"link": step.state.name, "streams": step.state.streams, "reason": step.reason})]
