"""Snapshot names and retention (zc-ctl snapshot): pure, shared by the controller (which names a snapshot when it
creates the job) and the destination agent (which picks the link base and prunes).

A snapshot is a directory named after the UTC time its job was created, ``2026-11-30T020000Z``: names sort as
times do. While its job runs it is written as ``.2026-11-30T020000Z.in-progress`` and only renamed to its name
when the job is done, so a directory under a snapshot name is always complete (rsnapshot's and Time Machine's
way: a marker file written last would need every reader, a restore by hand included, to look for it). A snapshot
being pruned is first renamed to ``.NAME.pruning``, so a half-removed one never looks complete either.

Retention follows restic's ``forget``: with ``keep_daily`` N, the newest snapshot of each of the N most recent
days that have snapshots is kept; likewise ISO weeks and calendar months (UTC); a snapshot kept by any rule stays;
the newest snapshot always stays; with every count 0 all are kept.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import NamedTuple

NAME_FORMAT = "%Y-%m-%dT%H%M%SZ"
_NAME = re.compile(rb"\d{4}-\d{2}-\d{2}T\d{6}Z")
IN_PROGRESS = b".in-progress"
PRUNING = b".pruning"
MAX_KEEP = 100_000
"""A keep count above this is refused (a typo, not a plan: 270 years of dailies)."""


class SnapshotEntry(NamedTuple):
    """One entry of a snapshots directory as zc-ctl snapshots lists it: a complete snapshot, or the hidden
    in-progress directory of one (``writing``: a run holds it now; else an interrupted run left it). A named
    tuple, not a dataclass: zc-ctl's parser imports this module, and dataclasses would cost its start-up."""

    name: str
    in_progress: bool = False
    writing: bool = False


def name_at(t: float) -> str:
    """The snapshot name of the UTC time ``t`` (seconds since the epoch)."""
    return datetime.fromtimestamp(int(t), UTC).strftime(NAME_FORMAT)


def parse_name(name: bytes | str) -> datetime | None:
    """The time a snapshot name stands for; None for anything else (hidden, in progress, other entries)."""
    raw = name.encode() if isinstance(name, str) else name
    if _NAME.fullmatch(raw) is None:
        return None
    try:
        return datetime.strptime(raw.decode(), NAME_FORMAT).replace(tzinfo=UTC)
    except ValueError:  # 2026-13-45T...: the shape of a name, not a time
        return None


def in_progress(name: str) -> bytes:
    """The hidden directory a snapshot is written into until its job is done."""
    return b"." + name.encode() + IN_PROGRESS


def pruning(name: bytes) -> bytes:
    return b"." + name + PRUNING


def leftover(entry: bytes) -> bool:
    """An in-progress or pruning directory (of this rule or another run of it): cleaned up unless still in use."""
    for suffix in (IN_PROGRESS, PRUNING):
        if entry.startswith(b".") and entry.endswith(suffix) and parse_name(entry[1:-len(suffix)]) is not None:
            return True
    return False


def _day(t: datetime) -> object:
    return t.date()


def _week(t: datetime) -> object:
    iso = t.isocalendar()
    return (iso.year, iso.week)


def _month(t: datetime) -> object:
    return (t.year, t.month)


def retain(names: Iterable[str], daily: int = 0, weekly: int = 0, monthly: int = 0) -> set[str]:
    """The snapshot names to keep (see the module's rule); names that are not snapshot names are ignored."""
    when = {n: t for n in names if (t := parse_name(n)) is not None}
    newest_first = sorted(when, reverse=True)
    if not (daily or weekly or monthly):
        return set(newest_first)
    keep = set(newest_first[:1])
    rules: list[tuple[int, Callable[[datetime], object]]] = [(daily, _day), (weekly, _week), (monthly, _month)]
    for count, period in rules:
        last: object = None
        for n in newest_first:
            if count <= 0:
                break
            p = period(when[n])
            if p != last:
                keep.add(n)
                last = p
                count -= 1
    return keep


def newest(names: Iterable[str], upto: str = "") -> str | None:
    """The newest snapshot name, the link base of the next: the newest up to ``upto`` (the new snapshot's own
    name, which an earlier attempt of its job may have completed already) when there is one, else the newest
    (the clock went back)."""
    ordered = sorted(n for n in names if parse_name(n) is not None)
    older = [n for n in ordered if n <= upto] if upto else ordered
    pick = older or ordered
    return pick[-1] if pick else None


__all__ = ["MAX_KEEP", "NAME_FORMAT", "SnapshotEntry", "in_progress", "leftover", "name_at", "newest", "parse_name",
           "pruning", "retain"]
