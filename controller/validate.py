"""What the controller takes from the network, checked or clamped at the edge before the engine sees it.

Agents and clients are peers, not trusted code: a name, an address or a number they send ends up in the
SQLite store, in every ``ListAgents`` response and in scheduling arithmetic. So:

- identities and requests are *refused* (``InvalidArgument`` -> INVALID_ARGUMENT, one sentence naming the
  rule): agent names, addresses, export lists, job options, request sizes;
- measurements are *clamped* (health, reports, watch-rule statuses): a broken sample must not cost an agent
  its session, and no value may break a response for everyone (a ``mem_total`` of 2**64-1 did: the health
  history keeps doubles, and the value came back as an integer too large for its field).

Pure functions over domain types; the gRPC adapter (``service.py``) calls them.
"""

from __future__ import annotations

import ipaddress
import math
import posixpath
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from zcrepl.controller.policy import MAX_STREAMS
from zcrepl.controller.registry import HISTORY
from zcrepl.controller.scheduler import overlaps
from zcrepl.core.errors import InvalidArgument, InvalidPath
from zcrepl.core.filters import FilterError, check_rules
from zcrepl.core.paths import HOST_NAME_RULE, canonical_abs, relative_to, show, show_name, valid_host_name
from zcrepl.core.snapshots import MAX_KEEP
from zcrepl.core.types import (
    MAX_LINK_DEST,
    PLAN_LISTED,
    PLAN_LISTED_BYTES,
    SKIPPED_LISTED,
    AgentInfo,
    DiskIO,
    DiskUsage,
    Endpoint,
    HostHealth,
    JobOptions,
    NetIO,
    PlanItem,
    Skipped,
    TransferReport,
)
from zcrepl.core.watchtypes import WatchStatus

MAX_EXPORTS = 64
MAX_ATTEMPTS = 100
MAX_BWLIMIT = 1 << 50  # bytes/s (1 PiB/s): far above any link, far below what a double or SQLite mishandles
MAX_NAMES = 10_000  # agent names in one request
MAX_DESTINATIONS = 1_000  # of one fan-out or watch rule
MAX_ACTIVE = 10_000  # transfer refs in one Register
MAX_WATCH_STATUSES = 10_000  # rule statuses in one heartbeat
MAX_TEXT = 2_000  # characters of an error or warning from an agent
MAX_LABEL = 64  # characters of a device or interface name, a version
MAX_HOSTNAME = 253
MAX_REASON = 500  # characters of a skipped entry's reason
MAX_SKIPPED_PATH = 4096  # bytes of a skipped entry's path kept by the controller
MAX_SOURCE_ADDRESSES = 16  # further addresses an agent's data connections may come from
TRANSPORTS = frozenset({"", "none", "tls", "ktls"})

# Health: what a real host can report, with room to spare. Integers stay below 2**53 (exact as doubles).
MAX_BYTES = 1 << 52  # 4 PiB of memory or RSS
MAX_DISK = 1 << 60  # 1 EiB of one filesystem
MAX_RATE = 1e13  # bytes/s (10 TB/s)
MAX_LOAD = 1e6
MAX_CPUS = 65_536
MAX_COUNT = (1 << 32) - 1  # fds, transfers, inotify watches (uint32 on the wire)
MAX_DEVICES = 256  # disks, NICs
MAX_SPEED_MBPS = 10_000_000  # 10 Tb/s
MAX_TIME = 1e11  # seconds since the epoch (year 5138)

_FLOATS: dict[str, tuple[float, float]] = {
    "sampled_at": (0.0, MAX_TIME), "cpu_percent": (0.0, 100.0), "load1": (0.0, MAX_LOAD),
    "load5": (0.0, MAX_LOAD), "load15": (0.0, MAX_LOAD), "swap_in_bps": (0.0, MAX_RATE),
    "swap_out_bps": (0.0, MAX_RATE), "disk_read_bps": (0.0, MAX_RATE), "disk_write_bps": (0.0, MAX_RATE),
    "net_recv_bps": (0.0, MAX_RATE), "net_sent_bps": (0.0, MAX_RATE), "agent_cpu_percent": (0.0, 100.0 * MAX_CPUS),
    "transfer_bps": (0.0, MAX_RATE),
}
_INTS: dict[str, int] = {
    "cpu_count": MAX_CPUS, "mem_total": MAX_BYTES, "mem_available": MAX_BYTES, "open_fds": MAX_COUNT,
    "agent_rss": MAX_BYTES, "active_transfers": MAX_COUNT, "inotify_watches_used": MAX_COUNT,
    "inotify_watches_max": MAX_COUNT,
}
# RFC 1123 labels, plus '_' (found in /etc/hosts names, and harmless to a resolver).
_DNS_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


# -- identities and requests: refused -----------------------------------------------------------------
def host_name(name: str, what: str = "agent name") -> str:
    if not valid_host_name(name):
        raise InvalidArgument(f"{what} '{show_name(name)}' is refused: {HOST_NAME_RULE}")
    return name


def host_names(names: list[str]) -> list[str]:
    if len(names) > MAX_NAMES:
        raise InvalidArgument(f"{len(names)} agent names in one request; ask for at most {MAX_NAMES}")
    return [host_name(n) for n in names]


def address(addr: str, what: str) -> str:
    """``HOST:PORT`` a peer can dial: a DNS name or an IP address (``[v6]`` in brackets), port 1..65535."""
    host, sep, port = addr.rpartition(":")
    problem = ""
    if not sep or not port.isascii() or not port.isdigit() or len(port) > 5 or not 1 <= int(port) <= 65535:
        problem = "write HOST:PORT with a port from 1 to 65535"
    elif host.startswith("[") and host.endswith("]"):
        problem = _ip_problem(host[1:-1], v6=True)
    else:
        try:
            problem = _ip_problem(host, v6=False)
        except ValueError:
            problem = _dns_problem(host)
    if problem:
        raise InvalidArgument(f"{what} '{show_name(addr)}' is refused: {problem} (for example 10.0.0.5:7422)")
    return addr


def _ip_problem(text: str, *, v6: bool) -> str:
    """Why an IP literal cannot be dialled ("" when it can); ValueError when ``text`` is no IPv4 literal."""
    if v6:
        try:
            ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv6Address(text)
        except ValueError:
            return "the part in brackets is not an IPv6 address"
    else:
        ip = ipaddress.IPv4Address(text)
    if ip.is_unspecified:
        return "an unspecified address (0.0.0.0 or ::) cannot be dialled by peers; set the agent's advertise_host"
    if ip.is_multicast:
        return "a multicast address cannot be dialled"
    return ""


def _dns_problem(host: str) -> str:
    labels = host.split(".")
    if not host or len(host) > MAX_HOSTNAME or not all(_DNS_LABEL.fullmatch(x) for x in labels):
        return (f"the host must be an IP address or a DNS name of at most {MAX_HOSTNAME} characters "
                "(labels of letters, digits, '-' and '_')")
    if labels[-1].isdigit():
        return "the host looks like an IP address but is not one"
    return ""


def agent_info(info: AgentInfo) -> AgentInfo:
    """A Register's self-description, refused whole when any part is out of bounds."""
    name = host_name(info.name)
    address(info.data_address, f"{name}'s data address")
    if info.grpc_address:
        address(info.grpc_address, f"{name}'s gRPC address")
    _exports(name, info.exports)
    for label, text, limit in (("version", info.version, MAX_LABEL), ("hostname", info.hostname, MAX_HOSTNAME)):
        if len(text) > limit or not text.isprintable():
            raise InvalidArgument(f"{name}'s {label} '{show_name(text)}' is refused: at most {limit} printable "
                                  "characters")
    if info.site and not (len(info.site) <= MAX_LABEL and valid_host_name(info.site)):
        raise InvalidArgument(f"{name}'s site '{show_name(info.site[:MAX_LABEL])}' is refused: a site label is 1 to "
                              f"{MAX_LABEL} characters from A-Z, a-z, 0-9, '.', '_' and '-'")
    _source_addresses(name, info.source_addresses)
    return info


def _exports(name: str, exports: Sequence[bytes]) -> None:
    if len(exports) > MAX_EXPORTS:
        raise InvalidArgument(f"{name} registers {len(exports)} exports; at most {MAX_EXPORTS} are accepted")
    for e in exports:
        try:
            ok = canonical_abs(e) == e
        except InvalidPath:
            ok = False
        if not ok:
            raise InvalidArgument(f"{name}'s export {show(e[:200])!r} is refused: an export is an absolute, "
                                  "canonical path of at most 4096 bytes")
    if len(set(exports)) != len(exports):
        raise InvalidArgument(f"{name} registers the same export twice")


def _source_addresses(name: str, addresses: Sequence[str]) -> None:
    if len(addresses) > MAX_SOURCE_ADDRESSES:
        raise InvalidArgument(f"{name} lists {len(addresses)} source addresses; at most "
                              f"{MAX_SOURCE_ADDRESSES} are accepted")
    for a in addresses:
        try:
            ipaddress.ip_address(a)
        except ValueError:
            raise InvalidArgument(f"{name}'s source address '{show_name(a[:MAX_LABEL])}' is refused: list IP "
                                  "addresses") from None


def options(o: JobOptions) -> JobOptions:
    if o.streams > MAX_STREAMS:
        raise InvalidArgument(f"streams {o.streams} is refused: choose 0 (automatic) to {MAX_STREAMS} parallel "
                              "connections")
    if o.max_attempts > MAX_ATTEMPTS:
        raise InvalidArgument(f"max_attempts {o.max_attempts} is refused: choose 0 (the controller's default) "
                              f"to {MAX_ATTEMPTS}")
    if o.bwlimit > MAX_BWLIMIT:
        raise InvalidArgument(f"bwlimit {o.bwlimit} is refused: choose 0 (unlimited) to {MAX_BWLIMIT} bytes per "
                              "second")
    if min(o.streams, o.max_attempts, o.bwlimit) < 0:
        raise InvalidArgument("streams, max_attempts and bwlimit cannot be negative")
    try:
        check_rules(o.filters)
    except FilterError as err:
        raise InvalidArgument(str(err)) from None
    if o.delete_excluded and not o.delete:
        o = replace(o, delete=True)  # as in rsync, --delete-excluded implies --delete
    if len(o.link_dest) > MAX_LINK_DEST:
        raise InvalidArgument(f"{len(o.link_dest)} --link-dest directories are refused: name at most "
                              f"{MAX_LINK_DEST} (rsync's limit)")
    if o.dry_run and (o.backup_dir or o.link_dest):
        o = replace(o, backup_dir=b"", link_dest=())  # a dry run writes nothing, so it backs up and links nothing
    return snapshot_options(o)


def snapshot_options(o: JobOptions) -> JobOptions:
    """zc-ctl snapshot's options: keep counts in range and only on a snapshot, nothing a new directory can't use;
    the name is the controller's to give (engine.submit), so a client's is dropped."""
    keeps = {"--keep-daily": o.keep_daily, "--keep-weekly": o.keep_weekly, "--keep-monthly": o.keep_monthly}
    for flag, n in keeps.items():
        if not 0 <= n <= MAX_KEEP:
            raise InvalidArgument(f"{flag} {n} is refused: choose 0 (no such rule) to {MAX_KEEP:,}")
    if not o.snapshot:
        if any(keeps.values()) or o.snapshot_name:
            raise InvalidArgument("--keep-daily, --keep-weekly and --keep-monthly belong to snapshots: use "
                                  "zc-ctl snapshot SRC DST")
        return o
    if o.dry_run:
        raise InvalidArgument("--dry-run is refused for a snapshot: every snapshot is a new directory, so all "
                              "would be listed as created; run zc-ctl replicate -n against the newest snapshot")
    if o.backup_dir:
        raise InvalidArgument("--backup-dir is refused for a snapshot: a new snapshot replaces and deletes "
                              "nothing (the earlier snapshots are the previous versions); drop it")
    if len(o.link_dest) >= MAX_LINK_DEST:
        raise InvalidArgument(f"{len(o.link_dest)} --link-dest directories are refused for a snapshot: the "
                              f"newest snapshot takes one of rsync's {MAX_LINK_DEST}; name at most "
                              f"{MAX_LINK_DEST - 1}")
    return replace(o, snapshot_name="")


def several(o: JobOptions, what: str) -> JobOptions:
    """Options of a fan-out or a watch rule: a dry run plans one destination at a time, once."""
    if o.dry_run:
        raise InvalidArgument(f"--dry-run is refused for {what}: submit one dry-run job per destination")
    if what == "a watch rule" and (o.backup_dir or o.link_dest):
        raise InvalidArgument("--backup-dir and --link-dest are refused for a watch rule: they belong to one-off "
                              "jobs and snapshots; drop --watch")
    if o.snapshot:
        raise InvalidArgument(f"a snapshot is refused for {what}: a snapshot is one job into one snapshots "
                              "directory; make one per destination")
    return o


def job_dirs(src: Endpoint, dst: Endpoint, o: JobOptions, exports: tuple[bytes, ...]) -> JobOptions:
    """--backup-dir and --link-dest resolved to absolute paths on the destination host and checked: inside one
    of its exports (``exports``; empty when not known yet, then only the agent checks), and overlapping neither
    the job's destination (a backup or link base inside the tree it replicates, or holding it, would replicate
    into itself, so rsync's exclude-the-backup-dir trick is not needed) nor, on the same host, its source."""
    def resolve(raw: bytes, flag: str) -> bytes:
        label = f"--{flag} {show(raw[:200])}"
        if not raw or b"\0" in raw:
            raise InvalidPath(f"{label}: give a directory on {dst.host}, absolute or relative to the destination")
        path = raw if raw.startswith(b"/") else posixpath.normpath(dst.path + b"/" + raw)
        path = canonical_abs(posixpath.normpath(path), what=label)
        there = Endpoint(dst.host, path)
        if exports and not any(relative_to(path, e) is not None for e in exports):
            raise InvalidPath(f"{label} resolves to {dst.host}:{show(path)}, outside {dst.host}'s exports "
                              f"({', '.join(show(e) for e in exports)}); choose a directory inside one of them")
        for ep, what in ((dst, "the destination"), (src, "the source")):
            if overlaps(there, ep):
                raise InvalidPath(f"{label} resolves to {dst.host}:{show(path)}, which overlaps {what} "
                                  f"{ep}; choose a directory beside it (for example "
                                  f"{show(posixpath.dirname(dst.path) or b'/')}/backup)")
        return path

    backup = resolve(o.backup_dir, "backup-dir") if o.backup_dir else b""
    links = tuple(resolve(d, "link-dest") for d in o.link_dest)
    if backup and backup in links:
        raise InvalidPath("--backup-dir and --link-dest name the same directory; keep backups apart from the "
                          "snapshots files are linked from")
    return replace(o, backup_dir=backup, link_dest=links)


def destinations(n: int) -> None:
    if n > MAX_DESTINATIONS:
        raise InvalidArgument(f"{n} destinations in one request; at most {MAX_DESTINATIONS} are accepted")


def history(n: int) -> int:
    """Samples of history asked for: more than the controller keeps is the same as all it keeps."""
    return min(n, HISTORY)


def active_refs(n: int, name: str) -> None:
    if n > MAX_ACTIVE:
        raise InvalidArgument(f"{name} reports {n} running transfers in its Register; at most {MAX_ACTIVE}")


# -- measurements: clamped ----------------------------------------------------------------------------
def health(h: HostHealth) -> HostHealth:
    """``h`` with every figure inside what a real host can report; ``h`` itself when nothing was off
    (the common case: the service then keeps serving the message as it arrived)."""
    changes: dict[str, Any] = {}
    for name, (lo, hi) in _FLOATS.items():
        v = getattr(h, name)
        if not lo <= v <= hi:  # NaN fails too
            changes[name] = _clamp(v, lo, hi)
    for name, hi_int in _INTS.items():
        if getattr(h, name) > hi_int:
            changes[name] = hi_int
    if h.mem_available > changes.get("mem_total", h.mem_total):
        changes["mem_available"] = changes.get("mem_total", h.mem_total)
    cores = h.cpu_per_core
    if len(cores) > MAX_CPUS or not all(0.0 <= c <= 100.0 for c in cores):
        changes["cpu_per_core"] = tuple(_clamp(c, 0.0, 100.0) for c in cores[:MAX_CPUS])
    if len(h.exports) > MAX_EXPORTS or not all(map(_disk_usage_ok, h.exports)):
        changes["exports"] = tuple(_disk_usage(d) for d in h.exports[:MAX_EXPORTS] if len(d.path) <= 4096)
    if len(h.disks) > MAX_DEVICES or not all(map(_disk_io_ok, h.disks)):
        changes["disks"] = tuple(DiskIO(_label(d.device), _clamp(d.read_bps, 0, MAX_RATE),
                                        _clamp(d.write_bps, 0, MAX_RATE), _clamp(d.busy_percent, 0, 100))
                                 for d in h.disks[:MAX_DEVICES])
    if len(h.nics) > MAX_DEVICES or not all(map(_nic_ok, h.nics)):
        changes["nics"] = tuple(NetIO(_label(n.interface), _clamp(n.recv_bps, 0, MAX_RATE),
                                      _clamp(n.sent_bps, 0, MAX_RATE), min(n.speed_mbps, MAX_SPEED_MBPS))
                                for n in h.nics[:MAX_DEVICES])
    if _label(h.data_nic) != h.data_nic:
        changes["data_nic"] = _label(h.data_nic)
    return replace(h, **changes) if changes else h


def report(r: TransferReport) -> TransferReport:
    """An agent's transfer report with its free text and its lists of skipped entries and file errors bounded
    (``SKIPPED_LISTED`` of each kind)."""
    skipped = r.skipped
    errors = sum(x.error for x in skipped)
    if errors > SKIPPED_LISTED or len(skipped) - errors > SKIPPED_LISTED or any(
            len(x.path) > MAX_SKIPPED_PATH or _text(x.reason, MAX_REASON) != x.reason for x in skipped):
        skipped = tuple(Skipped(x.path[:MAX_SKIPPED_PATH], _text(x.reason, MAX_REASON), x.error)
                        for error in (False, True) for x in [y for y in skipped if y.error is error][:SKIPPED_LISTED])
    error = _text(r.error, MAX_TEXT)
    if r.stats.transport not in TRANSPORTS:  # how the bytes travelled: one of a few words, never free text
        r = replace(r, stats=replace(r.stats, transport="?"))
    plan = _plan(r.plan)
    if skipped is r.skipped and error == r.error and plan is r.plan:
        return r
    return replace(r, error=error, skipped=skipped, plan=plan)


PLAN_CHANGES = frozenset({"created", "updated", "deleted"})
PLAN_KINDS = frozenset({"file", "dir", "symlink", "hardlink"})
PLAN_WHY = frozenset({"size", "mtime", "content", "mode", "target", "owner", "type", "link"})


def _plan(items: tuple[PlanItem, ...]) -> tuple[PlanItem, ...]:
    """A dry run's plan bounded: at most PLAN_LISTED items and PLAN_LISTED_BYTES of paths, known words only."""
    out: list[PlanItem] = []
    held = 0
    for x in items[:PLAN_LISTED]:
        held += len(x.path) + len(x.target)
        if held > PLAN_LISTED_BYTES:
            break
        out.append(PlanItem(x.path[:MAX_SKIPPED_PATH], x.change if x.change in PLAN_CHANGES else "?",
                            x.kind if x.kind in PLAN_KINDS else "?", tuple(w for w in x.why[:8] if w in PLAN_WHY),
                            max(0, min(x.size, MAX_DISK)), x.target[:MAX_SKIPPED_PATH]))
    return items if tuple(out) == items else tuple(out)


def watch_statuses(statuses: list[WatchStatus]) -> list[WatchStatus]:
    out = []
    for st in statuses[:MAX_WATCH_STATUSES]:
        out.append(replace(st, last_error=_text(st.last_error, MAX_TEXT), warning=_text(st.warning, MAX_TEXT),
                           lag=_clamp(st.lag, 0.0, MAX_TIME), last_error_at=_clamp(st.last_error_at, 0.0, MAX_TIME),
                           last_shipped_at=_clamp(st.last_shipped_at, 0.0, MAX_TIME)))
    return out


def _clamp(v: float, lo: float, hi: float) -> float:
    return lo if math.isnan(v) else min(max(v, lo), hi)


def _text(s: str, limit: int) -> str:
    """At most ``limit`` characters, non-printable ones (controls, bidi overrides) replaced by '?'."""
    s = s[:limit]
    return s if s.isprintable() else "".join(c if c.isprintable() else "?" for c in s)


def _label(s: str) -> str:
    return _text(s, MAX_LABEL)


def _disk_usage_ok(d: DiskUsage) -> bool:
    return (len(d.path) <= 4096 and max(d.total, d.used, d.free) <= MAX_DISK and 0.0 <= d.percent <= 100.0
            and _label(d.device) == d.device)


def _disk_usage(d: DiskUsage) -> DiskUsage:
    return DiskUsage(d.path, min(d.total, MAX_DISK), min(d.used, MAX_DISK), min(d.free, MAX_DISK),
                     _clamp(d.percent, 0.0, 100.0), _label(d.device))


def _disk_io_ok(d: DiskIO) -> bool:
    return (_label(d.device) == d.device and 0 <= d.read_bps <= MAX_RATE and 0 <= d.write_bps <= MAX_RATE
            and 0 <= d.busy_percent <= 100)


def _nic_ok(n: NetIO) -> bool:
    return (_label(n.interface) == n.interface and 0 <= n.recv_bps <= MAX_RATE and 0 <= n.sent_bps <= MAX_RATE
            and n.speed_mbps <= MAX_SPEED_MBPS)

