"""The daemons' settings: every field of AgentConfig and ControllerConfig is declared once, with
:func:`zcrepl.core.settings.setting`, and from it come the default, the TOML key, the ``ZC_*`` variable, the flag,
its ``--help`` line and its check (see zcrepl.core.settings). Checks that tie settings together are ``validate``.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from typing import Any

from zcrepl.core.errors import ConfigError
from zcrepl.core.exportpolicy import parse_export_policies
from zcrepl.core.paths import HOST_NAME_RULE, show_name, valid_host_name
from zcrepl.core.settings import Check, at_least, check_fields, positive, setting, within
from zcrepl.core.settings import load_config as load_config  # the daemons' and the tests' way in
from zcrepl.core.wellknown import (  # defined there so zc-ctl's parser needs none of this module
    DEFAULT_AGENT_PORT,
    DEFAULT_CONTROLLER,
    DEFAULT_CONTROLLER_PORT,
    DEFAULT_DATA_PORT,
    DEFAULT_ENROLL_PORT,
)

MAX_SOURCE_ADDRESSES = 16
ENCRYPT_MODES = ("never", "always", "cross-site")
COMPRESS_MODES = ("auto", "never", "always")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("kv", "json")
DAY = 86400.0
TLS = "TLS (mutual; required unless --insecure)"
LIMITS = "limits on what peers can make the agent hold"
TUNING = "timeouts and tuning"
LOAD = ("load policy (a job starts only while both hosts are at or under every max-*; a running transfer slows "
        "down, then pauses, above a high-* and speeds up again once both are back under the max-*)")
OPS = "observability"
HA = "several controllers on one PostgreSQL store (one leads; see controller/leadership.py)"
ADDRESS = "HOST:PORT"


def _address(optional: bool) -> Check:
    def check(key: str, value: str) -> None:
        if value or not optional:
            split_address(value)
    return check


def _seconds(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{key} must be a positive number of seconds")


@dataclass(frozen=True)
class AgentConfig:
    name: str = setting(factory=lambda: socket.gethostname().split(".")[0], default_text="the short hostname",
                        help="agent (host) name operators use in HOST:/path", metavar="NAME")
    controller: str = setting(DEFAULT_CONTROLLER, "controller address, or several sharing one PostgreSQL store "
                              "separated by commas: the agent finds their leader and follows it",
                              metavar="HOST:PORT[,HOST:PORT...]")
    exports: tuple[bytes, ...] = setting((), "directory root to serve", metavar="DIR", flag="export")
    # Empty: every interface, or loopback only when insecure (see resolve_defaults).
    listen: str = setting("", "gRPC API address (port 0 = any free port)", metavar=ADDRESS,
                          default_text=f"0.0.0.0:{DEFAULT_AGENT_PORT}, 127.0.0.1:{DEFAULT_AGENT_PORT} with --insecure")
    data_listen: str = setting("", "data port address (port 0 = any free port)", metavar=ADDRESS,
                               default_text=f"0.0.0.0:{DEFAULT_DATA_PORT}, 127.0.0.1:{DEFAULT_DATA_PORT} with "
                               "--insecure")
    # Without ca/cert/key the agent uses what it enrolled into state_dir with a join token, and refuses to start
    # unless insecure is set; all of them are reloaded when they change.
    ca: str = setting("", "the cluster CA certificate (PEM)", metavar="FILE", group=TLS)
    cert: str = setting("", "this agent's certificate (zcrepl://agent/NAME)", metavar="FILE", group=TLS)
    key: str = setting("", "its private key", metavar="FILE", group=TLS)
    crl: str = setting("", "revocation list, reloaded when it changes", metavar="FILE", group=TLS)
    insecure: bool = setting(False, "no TLS and no authentication (binds loopback unless --listen says otherwise)",
                             group=TLS)
    join: str = setting("", "enrol with a token from `zc-ctl token create --agent NAME` (once; kept in "
                        "--state-dir)", metavar="TOKEN", group=TLS)
    state_dir: str = setting("/var/lib/zcrepl-agent", "where an enrolled certificate is kept", metavar="DIR",
                             group=TLS)
    advertise_host: str = setting("", "host to advertise for ports listening on a wildcard address (default: the "
                                  "local address that reaches the controller)", metavar="HOST")
    # The controller's "cross-site" encrypt policy encrypts between agents whose sites differ or are unset.
    site: str = setting("", "where this agent runs, a data centre or rack (the controller's encrypt = cross-site "
                        "compares these)", metavar="LABEL")
    # A receiver accepts its tickets only from its controller-stream address, its advertised hosts and these.
    source_addresses: tuple[str, ...] = setting(
        (), "another address this host's data connections may leave from (multi-homed hosts)", metavar="IP",
        flag="source-address")
    log_level: str = setting("info", "the least severe log lines written", choices=LOG_LEVELS, group=OPS)
    log_format: str = setting("kv", "log lines as key=value pairs or JSON objects", choices=LOG_FORMATS, group=OPS)
    ready_file: str = setting("", "write bound addresses as JSON here once serving", metavar="FILE", group=OPS)
    heartbeat_interval: float = setting(1.0, "heartbeat cadence until the controller's welcome sets it",
                                        metavar="SECONDS", group=TUNING, check=_seconds)
    reconnect_max: float = setting(10.0, "longest wait between attempts to reach the controller", metavar="SECONDS",
                                   group=TUNING, check=_seconds)
    handshake_timeout: float = setting(10.0, "a data connection must show its ticket within this",
                                       metavar="SECONDS", group=TUNING, check=_seconds)
    io_timeout: float = setting(60.0, "a data connection silent this long fails its transfer", metavar="SECONDS",
                                group=TUNING, check=_seconds)
    max_connections: int = setting(64, "data connections of authenticated transfers at once", group=LIMITS,
                                   check=at_least(1))
    # Low by default, so replication yields to the host's own work.
    transfer_nice: int = setting(10, "CPU nice of transfer threads", group=TUNING,
                                 check=within(0, 19, "0 (unchanged) to 19 (lowest)"))
    transfer_ioclass: str = setting("best-effort", "I/O scheduling class of transfer threads", group=TUNING,
                                    choices=("none", "best-effort", "idle"))
    transfer_iolevel: int = setting(7, "I/O priority of transfer threads within their class", group=TUNING,
                                    check=within(0, 7, "0 (high) to 7 (low)"))
    # Nothing by default: files belong to the agent's user, privileged xattrs are dropped.
    export_policy: tuple[str, ...] = setting(
        (), "what peers may set in export DIR: owners=keep|none, uids=LO-HI, gids=LO-HI, uid_map=SRC>DST, "
        "gid_map=SRC>DST, allow_privileged_xattrs=yes|no", metavar="DIR:KEY=VALUE,...")
    # Budgets for strangers, kept apart from max_connections, which only authenticated transfers use.
    max_pending: int = setting(64, "connections to the data port that have not shown a valid ticket yet",
                               group=LIMITS, check=at_least(1))
    max_pending_per_source: int = setting(32, "the same, per source address", group=LIMITS, check=at_least(1))
    # The receiver holds every name until the end, ~0.5 KiB per file still to come.
    max_manifest_entries: int = setting(2_000_000, "entries of one received manifest", group=LIMITS,
                                        check=at_least(1))
    max_hardlinks: int = setting(250_000, "hard links within one received manifest", group=LIMITS,
                                 check=at_least(1))
    max_changes_bytes: int = setting(64 << 20, "bytes of one round of watch-rule changes", metavar="BYTES",
                                     group=LIMITS, check=at_least(1), default_text="64 MiB")
    free_margin_bytes: int = setting(1 << 30, "space a receiver leaves free on the destination filesystem: a file "
                                     "whose preallocation would cut into it is refused", metavar="BYTES",
                                     group=LIMITS, check=at_least(0, " bytes"), default_text="1 GiB")
    # Each destination's partial area (.zc.partial: data of interrupted large files, kept for a resume) is swept
    # when a job or watch session starts there and at start-up: entries older than partial_max_age go, then the
    # oldest until it holds at most partial_max_bytes.
    partial_max_age: float = setting(7 * DAY, "age after which kept partial data of interrupted files goes",
                                     metavar="SECONDS", group=LIMITS, check=_seconds, default_text="7 days")
    partial_max_bytes: int = setting(0, "bytes of partial data kept per destination (0: a tenth of its "
                                     "filesystem)", metavar="BYTES", group=LIMITS, check=at_least(0, " bytes"))
    metrics_listen: str = setting("", "serve Prometheus metrics over plain HTTP here (off unless set; port 0 = any "
                                  "free port)", metavar=ADDRESS, group=OPS, check=_address(optional=True))
    # Kubernetes' gRPC probes do no TLS.
    health_listen: str = setting("", "serve only grpc.health.v1 in plaintext here, for probes without TLS such as "
                                 "Kubernetes' (off unless set; port 0 = any free port)", metavar=ADDRESS, group=OPS,
                                 check=_address(optional=True))

    @staticmethod
    def resolve_defaults(values: dict[str, Any]) -> dict[str, Any]:
        loopback = "127.0.0.1" if values.get("insecure") else "0.0.0.0"
        values.setdefault("listen", f"{loopback}:{DEFAULT_AGENT_PORT}")
        values.setdefault("data_listen", f"{loopback}:{DEFAULT_DATA_PORT}")
        return values

    def validate(self) -> None:
        check_tls(self.ca, self.cert, self.key, self.insecure, extra="join" if self.join else "")
        if not valid_host_name(self.name):
            raise ConfigError(f"name '{show_name(self.name)}': {HOST_NAME_RULE}")
        if not self.exports:
            raise ConfigError("no export configured: pass --export DIR (repeatable) or 'exports = [...]' in TOML")
        for addr in (*controller_list(self.controller), self.listen, self.data_listen):
            split_address(addr)
        check_fields(self)
        for exp in self.exports:
            if not os.path.isdir(exp):
                raise ConfigError(f"export {os.fsdecode(exp)!r} is not an existing directory; create it first")
        if self.site and not (len(self.site) <= 64 and valid_host_name(self.site)):
            raise ConfigError(f"site {self.site!r}: use letters, digits, '.', '_' and '-' (at most 64)")
        if len(self.source_addresses) > MAX_SOURCE_ADDRESSES:
            raise ConfigError(f"source_addresses: at most {MAX_SOURCE_ADDRESSES}")
        for a in self.source_addresses:
            try:
                ipaddress.ip_address(a)
            except ValueError:
                raise ConfigError(f"source_addresses: {a!r} is not an IP address") from None
        parse_export_policies(self.export_policy, self.exports)


@dataclass(frozen=True)
class HostLimit:
    """Ceilings for one host from ``host_limits``; 0 = none beyond the defaults."""

    jobs: int = 0  # concurrent jobs touching the host (replaces max_jobs_per_host for it)
    streams: int = 0  # data streams of all its running jobs together


def parse_host_limits(specs: tuple[str, ...]) -> dict[str, HostLimit]:
    """``("nas1:jobs=8,streams=16", "web3:streams=2")`` -> per-host limits; ConfigError names a bad spec."""
    out: dict[str, HostLimit] = {}
    for spec in specs:
        host, values = _limit_spec(spec, "host_limits", "HOST:jobs=N,streams=N", ("jobs", "streams"))
        if not valid_host_name(host):
            raise ConfigError(f"host_limits {spec!r}: {host!r} is not an agent name")
        if host in out:
            raise ConfigError(f"host_limits: {host} appears twice")
        out[host] = HostLimit(**values)
    return out


def parse_link_limits(specs: tuple[str, ...]) -> dict[tuple[str, str], int]:
    """``("hostA>hostB:streams=2",)`` -> {(source, destination): streams}; ConfigError names a bad spec."""
    out: dict[tuple[str, str], int] = {}
    for spec in specs:
        link, values = _limit_spec(spec, "link_limits", "SRC>DST:streams=N", ("streams",))
        src, sep, dst = link.partition(">")
        if not sep or not valid_host_name(src) or not valid_host_name(dst) or src == dst:
            raise ConfigError(f"link_limits {spec!r}: write SRC>DST:streams=N with two different agent names")
        if (src, dst) in out:
            raise ConfigError(f"link_limits: {src}>{dst} appears twice")
        out[(src, dst)] = values["streams"]
    return out


def parse_encrypt_links(specs: tuple[str, ...]) -> dict[tuple[str, str], bool]:
    """``("hostA>hostB:always", "*>nas1:never")`` -> {(source, destination): encrypt}; ``*`` is any agent."""
    return {link: mode == "always" for link, mode in _link_modes(specs, "encrypt_links", ("always", "never")).items()}


def parse_compress_links(specs: tuple[str, ...]) -> dict[tuple[str, str], str]:
    """``("hostA>hostB:always", "*>nas1:never")`` -> {(source, destination): mode}; ``*`` is any agent."""
    return _link_modes(specs, "compress_links", COMPRESS_MODES)


def _link_modes(specs: tuple[str, ...], key: str, modes: tuple[str, ...]) -> dict[tuple[str, str], str]:
    """``SRC>DST:MODE`` specs (agent names or ``*``) -> {(source, destination): mode}; ConfigError names a bad one."""
    out: dict[tuple[str, str], str] = {}
    forms = [f"SRC>DST:{m}" for m in modes]
    form = f"{', '.join(forms[:-1])} or {forms[-1]}"
    for spec in specs:
        link, sep, mode = spec.strip().rpartition(":")
        src, arrow, dst = link.partition(">")
        if (not sep or not arrow or mode not in modes
                or not all(h == "*" or valid_host_name(h) for h in (src, dst))):
            raise ConfigError(f"{key} {spec!r}: write {form} (agent names or *)")
        if (src, dst) in out:
            raise ConfigError(f"{key}: {src}>{dst} appears twice")
        out[(src, dst)] = mode
    return out


def _limit_spec(spec: str, key: str, form: str, names: tuple[str, ...]) -> tuple[str, dict[str, int]]:
    """``"NAME:a=1,b=2"`` -> ("NAME", {"a": 1, "b": 2}) with every value a whole number >= 1."""
    bad = ConfigError(f"{key} {spec!r}: write {form} (each number at least 1)")
    head, sep, tail = spec.strip().rpartition(":")
    if not sep or not head:
        raise bad
    values: dict[str, int] = {}
    for item in tail.split(","):
        name, eq, number = (x.strip() for x in item.partition("="))
        if name not in names or not eq or not number.isdigit() or int(number) < 1 or name in values:
            raise bad
        values[name] = int(number)
    return head, values


METRICS = ("cpu_percent", "load_per_core", "disk_busy_percent", "net_percent")


@dataclass(frozen=True)
class Thresholds:
    """Start thresholds (admission) and high-water marks (throttling), flat so config can set each one; the
    load policy's settings of ControllerConfig (see controller/policy.py for how they are used).

    A job starts only when both ends are at or under every ``max_*``. A running transfer slows down when
    either end goes over a ``high_*`` mark and speeds up / resumes only once both ends are back at or under
    the ``max_*`` start thresholds: the band between the two sets is the hysteresis that stops flapping.
    """

    max_cpu_percent: float = setting(85.0, "start jobs only under this CPU %", metavar="PCT", group=LOAD,
                                     check=positive())
    # load1 / cpu_count; load counts D-state tasks, so it sees I/O stalls too.
    max_load_per_core: float = setting(1.5, "start jobs only under this load per core", group=LOAD,
                                       check=positive())
    max_disk_busy_percent: float = setting(90.0, "start jobs only under this disk busy %", metavar="PCT",
                                           group=LOAD, check=positive())
    # NICs with unknown speed (0, e.g. lo) are skipped.
    max_net_percent: float = setting(85.0, "start jobs only under this use % of the NIC's link speed",
                                     metavar="PCT", group=LOAD, check=positive())
    high_cpu_percent: float = setting(95.0, "slow running transfers above this CPU %", metavar="PCT", group=LOAD)
    high_load_per_core: float = setting(2.5, "slow running transfers above this load per core", group=LOAD)
    high_disk_busy_percent: float = setting(98.0, "slow running transfers above this disk busy %", metavar="PCT",
                                            group=LOAD)
    high_net_percent: float = setting(95.0, "slow running transfers above this NIC use %", metavar="PCT",
                                      group=LOAD)
    # Free space at the destination must exceed bytes to move + margin; margin = min(fraction of the filesystem,
    # absolute bytes): the fraction keeps small filesystems (tmpfs, test dirs) usable, the absolute cap keeps a
    # 5% margin of a 100 TB array from holding back terabytes.
    free_margin_fraction: float = setting(0.05, "free space a job must leave at the destination, as a fraction of "
                                          "the filesystem (the smaller of this and free-margin-bytes counts)",
                                          metavar="FRACTION", group=LOAD, check=positive())
    free_margin_bytes: int = setting(1 << 30, "the same, in bytes", metavar="BYTES", group=LOAD,
                                     check=positive(), default_text="1 GiB")
    # Never guess: older health means unknown load, which blocks.
    max_health_age: float = setting(5.0, "health older than this blocks a job (its load is unknown)",
                                    metavar="SECONDS", group=LOAD, check=_seconds)
    slow_factor: float = setting(0.5, "each slow-down multiplies a transfer's bandwidth cap by this",
                                 metavar="FACTOR", group=LOAD, check=positive())
    # Gentle, against a sawtooth.
    speedup_factor: float = setting(1.25, "each calm sample multiplies the cap by this", metavar="FACTOR",
                                    group=LOAD, check=positive())
    # A trickle only holds resources.
    min_bwlimit: int = setting(1 << 20, "a bandwidth cap below this pauses the transfer instead",
                               metavar="BYTES/S", group=LOAD, check=positive(), default_text="1 MiB/s")

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first inconsistent setting."""
        for metric in METRICS:
            start, high = getattr(self, f"max_{metric}"), getattr(self, f"high_{metric}")
            if start <= 0:
                raise ConfigError(f"max_{metric} must be a positive number")
            if high < start:
                raise ConfigError(f"high_{metric} ({high:g}) must be at least max_{metric} ({start:g}): transfers "
                                  "slow down above the first and speed up again below the second")
        check_fields(self)
        if self.slow_factor >= 1 or self.speedup_factor <= 1 or self.free_margin_fraction >= 1:
            raise ConfigError("slow_factor and free_margin_fraction must be < 1, speedup_factor > 1")

    def limits(self, high: bool) -> tuple[float, ...]:
        """(cpu %, load per core, disk busy %, net %) of the high-water set or the start set."""
        p = "high_" if high else "max_"
        return tuple(getattr(self, p + m) for m in METRICS)


@dataclass(frozen=True)
class ControllerConfig(Thresholds):
    listen: str = setting("", "gRPC address (port 0 = any)", metavar=ADDRESS,
                          default_text=f"0.0.0.0:{DEFAULT_CONTROLLER_PORT}, 127.0.0.1:{DEFAULT_CONTROLLER_PORT} "
                          "with --insecure")
    state_dir: str = setting("/var/lib/zcrepl", "the controller's own files: the default SQLite store, auto-pki",
                             metavar="DIR")
    # psycopg's URL form; ?host=/run/postgresql for a Unix socket.
    store: str = setting("", "the job store: a SQLite file or a postgresql://USER[:PASSWORD]@HOST[:PORT]/DB URL",
                         metavar="PATH|URL", default_text="STATE_DIR/controller.sqlite3")
    ca: str = setting("", "the cluster CA certificate (PEM)", metavar="FILE", group=TLS)
    cert: str = setting("", "this controller's certificate (zcrepl://controller/NAME)", metavar="FILE", group=TLS)
    key: str = setting("", "its private key", metavar="FILE", group=TLS)
    crl: str = setting("", "revocation list, reloaded when it changes", metavar="FILE", group=TLS)
    ca_key: str = setting("", "the CA's key: lets the controller enrol agents and renew (join tokens, renewals, "
                          "revocations)", metavar="FILE", group=TLS)
    insecure: bool = setting(False, "no TLS and no authentication at all (binds loopback unless --listen says "
                             "otherwise)", group=TLS)
    # Zero-config TLS.
    auto_pki: bool = setting(False, "keep a CA of the controller's own in STATE_DIR/pki (created on the first "
                             "start)", group=TLS)
    san: tuple[str, ...] = setting((), "with --auto-pki: another DNS name or IP for the controller's certificate",
                                   metavar="NAME_OR_IP", group=TLS)
    # Server-authenticated TLS only.
    enroll_listen: str = setting("", "where agents enrol with a join token", metavar=ADDRESS, group=TLS,
                                 default_text=f"the --listen host, port {DEFAULT_ENROLL_PORT}")
    token_ttl: float = setting(3600.0, "default lifetime of join tokens", metavar="SECONDS", group=TLS,
                               check=within(60, 7 * DAY, "60 seconds to 7 days"))
    agent_cert_days: int = setting(30, "lifetime of enrolled agents' certificates", metavar="DAYS", group=TLS,
                                   check=within(1, 3650, "1 to 3650"))
    log_level: str = setting("info", "the least severe log lines written", choices=LOG_LEVELS, group=OPS)
    log_format: str = setting("kv", "log lines as key=value pairs or JSON objects", choices=LOG_FORMATS, group=OPS)
    ready_file: str = setting("", "write the bound address as JSON here once serving", metavar="FILE", group=OPS)
    heartbeat_interval: float = setting(1.0, "agent heartbeat cadence", metavar="SECONDS")
    offline_after: float = setting(5.0, "an agent whose stream is open but silent this long is offline",
                                   metavar="SECONDS")
    max_attempts: int = setting(5, "attempts per job before it fails", check=at_least(1))
    retry_base: float = setting(2.0, "first retry delay, doubling each time", metavar="SECONDS", check=_seconds)
    retry_max: float = setting(60.0, "longest retry delay", metavar="SECONDS", check=_seconds)
    max_jobs_per_host: int = setting(4, "concurrent jobs per host", check=at_least(1, why=", or no job could ever "
                                                                                     "start"))
    ready_timeout: float = setting(30.0, "how long the destination may take to answer READY before the attempt "
                                   "fails", metavar="SECONDS", check=_seconds)
    schedule_interval: float = setting(0.5, "time between scheduling passes", metavar="SECONDS", check=_seconds)
    # A hung or lying peer.
    stall_timeout: float = setting(120.0, "fail a running attempt after this long without a report from its "
                                   "agents", metavar="SECONDS", check=_seconds)
    # No other attempt of the job starts meanwhile; the agent stops it itself sooner (this minus the 30 s the
    # gRPC keepalive may take to notice a dead stream).
    attempt_grace: float = setting(60.0, "hold a running attempt this long for its agent to come back after losing "
                                   "it (0: fail such attempts at once)", metavar="SECONDS",
                                   check=at_least(0, why=" (fail at once) or a positive number of seconds"))
    # Ceilings, never targets.
    host_limits: tuple[str, ...] = setting((), "ceilings for one host: its concurrent jobs (replacing "
                                           "max-jobs-per-host), its streams in all", metavar="HOST:jobs=N,streams=N",
                                           flag="host-limit", group=LOAD)
    link_limits: tuple[str, ...] = setting((), "ceiling of the streams of all jobs on one link",
                                           metavar="SRC>DST:streams=N", flag="link-limit", group=LOAD)
    # So nothing waits forever.
    priority_aging: float = setting(600.0, "seconds of waiting that raise a job by one priority level",
                                    metavar="SECONDS", group=LOAD, check=_seconds)
    encrypt: str = setting("never", "data-plane TLS for jobs and watch rules that did not ask (--encrypt always "
                           "does): never, always, or cross-site (agents whose --site labels differ or are unset)",
                           choices=ENCRYPT_MODES)
    # Per-link overrides win over encrypt.
    encrypt_links: tuple[str, ...] = setting((), "per-link override of --encrypt (SRC or DST may be *)",
                                             metavar="SRC>DST:always|never", flag="encrypt-link")
    # zstd for jobs that did not say (--compress / --no-compress win); see controller/compression.py for auto.
    compress: str = setting("auto", "zstd on the data connections of jobs that did not say: auto (slow links "
                            "between hosts with idle cores), never, or always", choices=COMPRESS_MODES)
    # Per-link overrides win over compress.
    compress_links: tuple[str, ...] = setting((), "per-link override of --compress (SRC or DST may be *)",
                                              metavar="SRC>DST:auto|never|always", flag="compress-link")
    sync_ticket_ttl: float = setting(3600.0, "lifetime of a watch rule's data-port ticket; rotated at three "
                                     "quarters of it", metavar="SECONDS", check=within(2, 7 * DAY,
                                                                                         "2 seconds to 7 days"))
    metrics_listen: str = setting("", "serve Prometheus metrics over plain HTTP here (off unless set; port 0 = any "
                                  "free port)", metavar=ADDRESS, group=OPS, check=_address(optional=True))
    # "optional": browsers need no certificate, so only a loopback address is allowed (reach it with ssh -L).
    http_listen: str = setting("", "serve the read-only web view here, over HTTPS with the gRPC certificate (off "
                               "unless set)", metavar=ADDRESS, group=OPS)
    http_client_cert: str = setting("optional", "optional: no browser certificate, loopback addresses only; "
                                    "required: browsers present an operator certificate of the cluster CA",
                                    choices=("required", "optional"), group=OPS)
    health_listen: str = setting("", "serve only grpc.health.v1 in plaintext here, for probes without TLS such as "
                                 "Kubernetes' (off unless set; port 0 = any free port)", metavar=ADDRESS, group=OPS,
                                 check=_address(optional=True))
    advertise: str = setting("", "where agents and zc-ctl reach this controller; followers name the leader by it",
                             metavar=ADDRESS, group=HA, check=_address(optional=True),
                             default_text="the bound --listen address")
    # Leading stops when a check fails or takes longer than lease_timeout.
    lease_renew: float = setting(1.0, "the leader checks its lease this often", metavar="SECONDS", group=HA)
    lease_timeout: float = setting(2.0, "the leader stops leading when a check fails or takes longer than this",
                                   metavar="SECONDS", group=HA)
    lease_poll: float = setting(0.5, "a follower tries to take the lease this often", metavar="SECONDS", group=HA)

    @staticmethod
    def resolve_defaults(values: dict[str, Any]) -> dict[str, Any]:
        loopback = "127.0.0.1" if values.get("insecure") else "0.0.0.0"
        values.setdefault("listen", f"{loopback}:{DEFAULT_CONTROLLER_PORT}")
        if not values.get("enroll_listen"):
            host, port = split_address(values["listen"])
            host = f"[{host}]" if ":" in host else host
            values["enroll_listen"] = f"{host}:{DEFAULT_ENROLL_PORT if port else 0}"
        return values

    def validate(self) -> None:
        check_tls(self.ca, self.cert, self.key, self.insecure, extra="auto_pki" if self.auto_pki else "")
        split_address(self.listen)
        split_address(self.enroll_listen)
        if self.heartbeat_interval <= 0 or self.offline_after <= self.heartbeat_interval:
            raise ConfigError("offline_after must be larger than heartbeat_interval (both in seconds, > 0)")
        super().validate()
        check_http(self.http_listen, self.http_client_cert, self.insecure)
        if self.ca_key and not self.cert:
            raise ConfigError("ca_key is only used with ca, cert and key (with auto_pki the CA lives in state_dir)")
        parse_host_limits(self.host_limits)
        parse_link_limits(self.link_limits)
        parse_encrypt_links(self.encrypt_links)
        parse_compress_links(self.compress_links)
        if "://" in self.store and not is_postgres(self.store):
            raise ConfigError(f"store {self.store.split('://')[0]}://...: give a SQLite file path or a "
                              "postgresql:// URL")
        if not 0 < self.lease_renew < self.lease_timeout or self.lease_poll <= 0:
            raise ConfigError("lease_renew must be positive and shorter than lease_timeout, and lease_poll positive "
                              "(seconds)")


def is_postgres(store: str) -> bool:
    """Whether a ``store`` setting names a PostgreSQL database (otherwise it is a SQLite file)."""
    return store.startswith(("postgresql://", "postgres://"))


def check_tls(ca: str, cert: str, key: str, insecure: bool, extra: str = "") -> None:
    """ca, cert and key come together; insecure excludes them."""
    given = [n for n, v in (("ca", ca), ("cert", cert), ("key", key)) if v]
    if insecure and (given or extra):
        raise ConfigError(f"insecure cannot be combined with {', '.join(given + ([extra] if extra else []))}: "
                          "choose TLS or --insecure")
    if given and len(given) != 3:
        missing = [n for n in ("ca", "cert", "key") if n not in given]
        raise ConfigError(f"TLS needs ca, cert and key together; missing {', '.join(missing)} "
                          "(--ca FILE --cert FILE --key FILE, or ZC_CA / ZC_CERT / ZC_KEY)")


def check_http(listen: str, client_cert: str, insecure: bool) -> None:
    """The web view shows paths and errors: without a client certificate it is served on loopback only."""
    if client_cert not in ("required", "optional"):
        raise ConfigError(f"http_client_cert {client_cert!r}: choose required or optional")
    if not listen:
        return
    host, _ = split_address(listen)
    if insecure or client_cert == "required":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise ConfigError(f"http_listen {listen}: the web view without client certificates (http_client_cert = "
                          "optional) is served on loopback only; listen on 127.0.0.1:PORT and reach it with ssh -L, "
                          "or set http_client_cert = required (browsers then present an operator certificate)")


def controller_list(spec: str) -> list[str]:
    """``a:7420,b:7420`` -> ["a:7420", "b:7420"]: the controllers an agent or zc-ctl may reach."""
    out = [a.strip() for a in spec.split(",") if a.strip()]
    if not out:
        raise ConfigError("controller: give HOST:PORT, or several separated by commas")
    for a in out:
        split_address(a)
    return out


def split_address(addr: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) -> (host, port); port 0 asks for a free port."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"address {addr!r} is not HOST:PORT (for example 127.0.0.1:{DEFAULT_AGENT_PORT})")
    return host.strip("[]"), int(port)
