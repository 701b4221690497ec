"""When a schedule is due: cron expressions (through cronsim, which follows Debian's cron, DST quirks included) in
UTC or an IANA zone, and fixed intervals. Pure functions of their arguments; times are seconds since the epoch.

cronsim, not croniter: it has no dependencies, ships type hints, is marked stable and is kept by the author of
Healthchecks, which evaluates cron expressions for a living; croniter was declared abandoned in 2025 before
moving to a new home, still beta, and pulls in python-dateutil.
"""

from __future__ import annotations

import math
import zoneinfo
from datetime import UTC, datetime, tzinfo

from cronsim import CronSim, CronSimError

from zcrepl.core.errors import InvalidArgument

MIN_EVERY = 1.0
MAX_EVERY = 366 * 86400.0
MAX_CRON = 200  # characters
MAX_ZONE = 64  # characters; the longest IANA name has 32
# Debian cron's nicknames (@reboot has no meaning for a controller that may restart at any time).
NICKNAMES = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
             "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}
_EXAMPLE = "five fields, minute hour day-of-month month day-of-week, such as '0 2 * * *', or @daily"


def zone(tz: str) -> tzinfo:
    """The zone named ``tz`` (UTC when empty); InvalidArgument in one sentence for a name the system lacks."""
    if not tz:
        return UTC
    try:
        if len(tz) > MAX_ZONE or not tz.isprintable():
            raise ValueError(tz)
        return zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidArgument(f"--tz {tz[:100]!r} is not a time zone this controller knows; give an IANA name such as "
                              "Europe/Riga or America/New_York (empty: UTC)") from None


def expression(cron: str) -> str:
    """The expression cronsim reads: nicknames spelled out, fields upper-cased (mon, jan), spaces collapsed."""
    text = " ".join(cron.split())
    return NICKNAMES.get(text.lower(), text.upper())


def check(cron: str, every: float, tz: str, now: float) -> float:
    """Refuse in one sentence what can never run; the first due time after ``now`` otherwise."""
    if bool(cron) == bool(every):
        raise InvalidArgument("a schedule needs exactly one of --cron EXPR and --every INTERVAL")
    if every:
        if not MIN_EVERY <= every <= MAX_EVERY:  # NaN fails too
            raise InvalidArgument(f"--every {every:g}s is refused: give an interval from 1s to 366d (such as 1h or "
                                  "30m)")
        if tz:
            raise InvalidArgument("--tz applies to --cron only: an interval runs every so many seconds in any zone")
        return next_due(cron, every, tz, now, now)
    if len(cron) > MAX_CRON or not cron.isprintable():
        raise InvalidArgument(f"the cron expression is refused: give {_EXAMPLE}")
    try:
        CronSim(expression(cron), _local(now, zone(tz)))
    except CronSimError as err:
        # cronsim refuses a day no month has (30 2, 31 4) with the field's name too: such an expression never fires.
        raise InvalidArgument(f"cron expression {cron!r} is refused ({str(err).lower()}: a value out of range, or a "
                              f"day no month has, which never fires); give {_EXAMPLE}") from None
    due = next_due(cron, every, tz, now, now)
    if not math.isfinite(due):
        raise InvalidArgument(f"cron expression {cron!r} never fires (no time matches it in the next 50 years); check "
                              "its day-of-month, month and day-of-week")
    return due


def next_due(cron: str, every: float, tz: str, anchor: float, after: float) -> float:
    """The first due time strictly after ``after`` (inf if none). Intervals run at ``anchor + k * every``, k >= 1,
    so a schedule keeps its grid across restarts and missed slots are skipped, not queued up."""
    if every:
        k = max(1, math.floor((after - anchor) / every) + 1)
        due = anchor + k * every
        return due if due > after else due + every  # float rounding at a slot's edge
    try:
        return next(iter(CronSim(expression(cron), _local(after, zone(tz))))).timestamp()
    except StopIteration:
        return math.inf


def _local(t: float, tz: tzinfo) -> datetime:
    return datetime.fromtimestamp(t, tz)
