"""Whether a job's data connections carry zstd: the controller's decision per send, with its reason for
``zc-ctl explain`` (like the stream count).

The first rule that applies decides:

1. The job's ``--no-compress``; a copy within one host (nothing crosses a network).
2. Both agents must speak it (``AgentInfo.compress_bps`` > 0): an older agent on either end means plain bytes,
   even for a job that asked (the job still runs, and explain says why); then the job's ``--compress``.
3. A per-link override in ``compress_links`` (``SRC>DST``, then ``SRC>*``, ``*>DST``, ``*>*``), then ``compress``.
4. ``auto``: off until the link's throughput is measured (the zero-copy path is the default); off when either
   host is busy (the source under ``BUSY_CPU`` idle, or fewer than ``MIN_IDLE_CORES`` idle cores at either
   end: compression would slow the other work there down); on when the link moved under ``1/FAR`` of what the
   source's idle cores compress (each stream compresses on its own core, so at most ``streams`` of them count);
   off otherwise: the link is fast enough that sendfile beats compressing.

The compress rate is what the sending agent measured at start-up on text-like data at the default level
(``agent/transfer/compress.py``: ``measure_rate``), scaled to the job's level by ``LEVEL_SPEED``. The link's
throughput is the AIMD tracker's average of file bytes per second; after a compressed send that reads higher than
the link carries (file bytes are the wire bytes times the ratio), so the rule divides it by the ratio of the link's
last finished send (file bytes per wire byte; 1 after an uncompressed one). Otherwise a link that compression made
look fast would turn it off for the next send, and back on after that one.
"""

from __future__ import annotations

from dataclasses import dataclass

from zcrepl.core.config import ControllerConfig, parse_compress_links
from zcrepl.core.settings import default_of
from zcrepl.core.types import Compress, HostHealth, TransferStats
from zcrepl.core.units import rate

FAR = 4.0  # "far below": the link carries at most a quarter of what the idle cores compress
MIN_IDLE_CORES = 1.0
BUSY_CPU = 75.0  # percent of all cores busy at the source: no compression there
RATIO_MIN_BYTES = 1 << 20  # a send of fewer file bytes says too little about the ratio (its frames dominate)
# zstd's speed at each level relative to level 3 (what agents measure), on the agents' generated text, measured on
# the 2-core guest of bench/README.md with zstandard 0.25 (libzstd 1.5.7), best of three runs per level.
LEVEL_SPEED = {1: 1.42, 2: 1.1, 3: 1.0, 4: 0.57, 5: 0.52, 6: 0.43, 7: 0.39, 8: 0.32, 9: 0.31, 10: 0.28, 11: 0.16,
               12: 0.15, 13: 0.07, 14: 0.06, 15: 0.06, 16: 0.04, 17: 0.04, 18: 0.02, 19: 0.02}


@dataclass(frozen=True)
class CompressChoice:
    on: bool
    why: str


def idle_cores(h: HostHealth | None) -> float:
    if h is None or h.cpu_count <= 0:
        return 0.0
    return h.cpu_count * max(0.0, 100.0 - h.cpu_percent) / 100.0


def auto_decision(link_bps: float, src: HostHealth | None, dst: HostHealth | None, src_rate: int,
                  streams: int) -> CompressChoice:
    """Rule 4 of the module doc: ``link_bps`` the link's measured file bytes/s (0 = not yet), ``src_rate`` the
    source agent's compress bytes/s per core, ``streams`` the send's data connections."""
    if link_bps <= 0:
        return CompressChoice(False, "auto: the link's throughput is not measured yet, so the zero-copy path "
                                     "goes first")
    if src is None or dst is None:
        return CompressChoice(False, "auto: no recent health from both hosts, so no spare cores are known")
    if src.cpu_percent >= BUSY_CPU:
        return CompressChoice(False, f"auto: the source is busy ({src.cpu_percent:.0f}% CPU, compression needs "
                                     f"under {BUSY_CPU:.0f}%)")
    for side, h in (("source", src), ("destination", dst)):
        if idle_cores(h) < MIN_IDLE_CORES:
            return CompressChoice(False, f"auto: the {side} is busy ({idle_cores(h):.1f} idle cores of "
                                         f"{h.cpu_count})")
    cores = min(idle_cores(src), float(max(1, streams)))
    capacity = cores * src_rate
    if link_bps * FAR < capacity:
        return CompressChoice(True, f"auto: the link moved {rate(link_bps)}, far below the {rate(capacity)} "
                                    f"{cores:.1f} idle cores of the source compress")
    return CompressChoice(False, f"auto: the link is fast ({rate(link_bps)} against the {rate(capacity)} "
                                 f"{cores:.1f} idle cores of the source compress), so the zero-copy path")


class CompressPolicy:
    """The controller's ``compress`` and ``compress_links`` settings, applied per send."""

    def __init__(self, mode: str = default_of(ControllerConfig, "compress"), links: tuple[str, ...] = ()) -> None:
        self.mode = mode
        self.links = parse_compress_links(links)
        self.ratios: dict[tuple[str, str], float] = {}  # link -> file bytes per wire byte of its last finished send

    def ended(self, link: tuple[str, str], compressed: bool, stats: TransferStats) -> None:
        """A send on ``link`` settled: remember its ratio (1 when it went uncompressed)."""
        if stats.bytes_done >= RATIO_MIN_BYTES and stats.wire_bytes > 0:
            self.ratios[link] = max(1.0, stats.bytes_done / stats.wire_bytes) if compressed else 1.0

    def setting(self, src: str, dst: str) -> tuple[str, str]:
        """(mode, where it comes from) for the link."""
        for key in ((src, dst), (src, "*"), ("*", dst), ("*", "*")):
            if key in self.links:
                return self.links[key], f"compress_links {key[0]}>{key[1]}"
        return self.mode, "compress"

    def decide(self, asked: Compress, src: str, dst: str, rates: tuple[int, int], link_bps: float,
               health: tuple[HostHealth | None, HostHealth | None], streams: int, level: int = 0) -> CompressChoice:
        """Rules 1-4 of the module doc; ``rates`` and ``health`` are (source, destination), ``level`` the job's
        (0: the default); auto scales the source's measured rate (level 3) by ``LEVEL_SPEED``."""
        if asked is Compress.OFF:
            return CompressChoice(False, "not compressed: the job asked for none (--no-compress)")
        if src == dst:
            return CompressChoice(False, f"not compressed: a copy within {src} crosses no network")
        for name, bps in zip((src, dst), rates, strict=True):
            if bps <= 0:
                return CompressChoice(False, f"not compressed: {name}'s agent cannot compress (an older version); "
                                             "upgrade it to compress on this link")
        if asked is Compress.ON:
            return CompressChoice(True, "compressed: the job asked for it (--compress)")
        mode, where = self.setting(src, dst)
        if mode == "always":
            return CompressChoice(True, f"compressed: {where} = always")
        if mode == "never":
            return CompressChoice(False, f"not compressed: {where} = never")
        ratio = self.ratios.get((src, dst), 1.0)
        auto = auto_decision(link_bps / ratio, *health, int(rates[0] * LEVEL_SPEED.get(level or 3, 1.0)), streams)
        why = f"{'compressed' if auto.on else 'not compressed'}: {where} = {auto.why}"
        if ratio > 1.0 and link_bps > 0:
            why += f" (on the wire: {rate(link_bps)} of files at the last send's {ratio:.1f}x ratio)"
        return CompressChoice(auto.on, why)
