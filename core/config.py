"""Typed daemon configuration: defaults < TOML file < ``ZC_*`` environment < command-line flags.

Everything is validated once at start; a bad value raises ConfigError naming the key and its source.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

from zcrepl.core.errors import ConfigError, InvalidPath
from zcrepl.core.exportpolicy import parse_export_policies, table_specs
from zcrepl.core.paths import HOST_NAME_RULE, canonical_abs, show_name, valid_host_name
from zcrepl.core.wellknown import (  # defined there so zc-ctl's parser needs none of this module
    DEFAULT_AGENT_PORT,
    DEFAULT_CONTROLLER,
    DEFAULT_CONTROLLER_PORT,
    DEFAULT_DATA_PORT,
    DEFAULT_ENROLL_PORT,
)

MAX_SOURCE_ADDRESSES = 16
ENCRYPT_MODES = ("never", "always", "cross-site")


@dataclass(frozen=True)
class AgentConfig:
    name: str = dataclasses.field(default_factory=lambda: socket.gethostname().split(".")[0])
    # HOST:PORT of the controller, or several separated by commas (controllers sharing one PostgreSQL store):
    # the agent finds the leader among them and follows it.
    controller: str = DEFAULT_CONTROLLER
    exports: tuple[bytes, ...] = ()
    # Empty: every interface, or loopback only when insecure (see resolve_defaults).
    listen: str = ""
    data_listen: str = ""
    # TLS material (PEM files): the cluster CA, this agent's certificate (zcrepl://agent/NAME) and key, and an
    # optional revocation list; all reloaded when they change. Without them the agent uses what it enrolled
    # into state_dir with a join token, and refuses to start unless insecure is set.
    ca: str = ""
    cert: str = ""
    key: str = ""
    crl: str = ""
    insecure: bool = False
    join: str = ""  # a one-time token from `zc-ctl token create --agent NAME`
    state_dir: str = "/var/lib/zcrepl-agent"
    # Host the agent advertises for its ports when they listen on a wildcard address; empty means the
    # local address this host uses to reach the controller.
    advertise_host: str = ""
    # A label for where the agent runs (a data centre, a rack); the controller's "cross-site" encrypt
    # policy encrypts between agents whose sites differ or are unset.
    site: str = ""
    # Further IP addresses this agent's data connections may leave from (multi-homed hosts): a receiver
    # accepts its tickets only from its controller-stream address, its advertised hosts and these.
    source_addresses: tuple[str, ...] = ()
    log_level: str = "info"
    log_format: str = "kv"
    ready_file: str = ""
    heartbeat_interval: float = 1.0  # until the controller's Welcome sets it
    reconnect_max: float = 10.0
    handshake_timeout: float = 10.0
    io_timeout: float = 60.0
    max_connections: int = 64
    # Transfer threads run at this CPU nice (0-19) and I/O class/level: low by default, so replication
    # yields to the host's own work.
    transfer_nice: int = 10
    transfer_ioclass: str = "best-effort"
    transfer_iolevel: int = 7
    # What a peer may decide per export (see zcrepl.core.exportpolicy): "PATH:owners=keep,uids=LO-HI,...".
    # Nothing by default: files belong to the agent's user, privileged xattrs are dropped.
    export_policy: tuple[str, ...] = ()
    # Budgets for strangers: connections to the data port that have not shown a valid ticket yet, overall and
    # per source address (kept apart from max_connections, which only authenticated transfers use).
    max_pending: int = 64
    max_pending_per_source: int = 32
    # Per receiving session: entries of one manifest (the receiver holds every name until the end, ~0.5 KiB
    # per file still to come), hard links among them, and bytes of one round of watch-rule changes.
    max_manifest_entries: int = 2_000_000
    max_hardlinks: int = 250_000
    max_changes_bytes: int = 64 << 20
    # Space a receiver leaves free on the destination filesystem: a file whose preallocation would cut into
    # it is refused.
    free_margin_bytes: int = 1 << 30
    # Each destination's partial area (.zc.partial: data of interrupted large files, kept for a resume) is swept
    # when a job or watch session starts there and at start-up: entries older than partial_max_age seconds go,
    # then the oldest until it holds at most partial_max_bytes (0: a tenth of its filesystem).
    partial_max_age: float = 7 * 86400.0
    partial_max_bytes: int = 0
    # HOST:PORT of the plaintext Prometheus /metrics port; empty = no metrics port.
    metrics_listen: str = ""
    # HOST:PORT of a plaintext port serving only grpc.health.v1 (for Kubernetes' gRPC probes, which do no
    # TLS); empty = none.
    health_listen: str = ""

    @staticmethod
    def resolve_defaults(values: dict[str, Any]) -> dict[str, Any]:
        loopback = "127.0.0.1" if values.get("insecure") else "0.0.0.0"
        values.setdefault("listen", f"{loopback}:{DEFAULT_AGENT_PORT}")
        values.setdefault("data_listen", f"{loopback}:{DEFAULT_DATA_PORT}")
        return values

    def validate(self) -> None:  # noqa: C901
        check_tls(self.ca, self.cert, self.key, self.insecure, extra="join" if self.join else "")
        if not valid_host_name(self.name):
            raise ConfigError(f"name '{show_name(self.name)}': {HOST_NAME_RULE}")
        if not self.exports:
            raise ConfigError("no export configured: pass --export DIR (repeatable) or 'exports = [...]' in TOML")
        for addr in (*controller_list(self.controller), self.listen, self.data_listen):
            split_address(addr)
        for extra in (self.metrics_listen, self.health_listen):
            if extra:
                split_address(extra)
        for exp in self.exports:
            if not os.path.isdir(exp):
                raise ConfigError(f"export {os.fsdecode(exp)!r} is not an existing directory; create it first")
        if self.log_format not in ("kv", "json"):
            raise ConfigError(f"log_format {self.log_format!r}: choose 'kv' or 'json'")
        if self.site and not (len(self.site) <= 64 and valid_host_name(self.site)):
            raise ConfigError(f"site {self.site!r}: use letters, digits, '.', '_' and '-' (at most 64)")
        if len(self.source_addresses) > MAX_SOURCE_ADDRESSES:
            raise ConfigError(f"source_addresses: at most {MAX_SOURCE_ADDRESSES}")
        for a in self.source_addresses:
            try:
                ipaddress.ip_address(a)
            except ValueError:
                raise ConfigError(f"source_addresses: {a!r} is not an IP address") from None
        if not 0 <= self.transfer_nice <= 19:
            raise ConfigError(f"transfer_nice {self.transfer_nice}: choose 0 (unchanged) to 19 (lowest)")
        if self.transfer_ioclass not in ("none", "best-effort", "idle"):
            raise ConfigError(f"transfer_ioclass {self.transfer_ioclass!r}: choose none, best-effort or idle")
        if not 0 <= self.transfer_iolevel <= 7:
            raise ConfigError(f"transfer_iolevel {self.transfer_iolevel}: choose 0 (high) to 7 (low)")
        for key in ("max_connections", "max_pending", "max_pending_per_source", "max_manifest_entries",
                    "max_hardlinks", "max_changes_bytes"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be at least 1")
        if self.free_margin_bytes < 0:
            raise ConfigError("free_margin_bytes must be 0 or more bytes")
        if self.partial_max_age <= 0 or self.partial_max_bytes < 0:
            raise ConfigError("partial_max_age must be a positive number of seconds and partial_max_bytes 0 (a "
                              "tenth of the filesystem) or more bytes")
        if self.handshake_timeout <= 0 or self.io_timeout <= 0:
            raise ConfigError("handshake_timeout and io_timeout must be positive numbers of seconds")
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
    out: dict[tuple[str, str], bool] = {}
    for spec in specs:
        link, sep, mode = spec.strip().rpartition(":")
        src, arrow, dst = link.partition(">")
        if (not sep or not arrow or mode not in ("always", "never")
                or not all(h == "*" or valid_host_name(h) for h in (src, dst))):
            raise ConfigError(f"encrypt_links {spec!r}: write SRC>DST:always or SRC>DST:never (agent names or *)")
        if (src, dst) in out:
            raise ConfigError(f"encrypt_links: {src}>{dst} appears twice")
        out[(src, dst)] = mode == "always"
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


@dataclass(frozen=True)
class ControllerConfig:
    listen: str = ""  # empty: every interface, or loopback only when insecure
    state_dir: str = "/var/lib/zcrepl"
    # The job store: a SQLite file, or a postgresql://USER[:PASSWORD]@HOST[:PORT]/DB URL (psycopg's form;
    # ?host=/run/postgresql for a Unix socket). Empty: state_dir/controller.sqlite3.
    store: str = ""
    # TLS material (see AgentConfig); ca_key lets the controller sign (join tokens, renewals, revocations).
    ca: str = ""
    cert: str = ""
    key: str = ""
    crl: str = ""
    ca_key: str = ""
    insecure: bool = False
    # Keep a CA of the controller's own in state_dir/pki (created on first start): zero-config TLS.
    auto_pki: bool = False
    # Extra DNS names / IPs for the certificate auto_pki makes for the controller.
    san: tuple[str, ...] = ()
    # Where agents with a join token enrol (server-authenticated TLS only): empty = the listen host, port 7423.
    enroll_listen: str = ""
    token_ttl: float = 3600.0
    agent_cert_days: int = 30
    log_level: str = "info"
    log_format: str = "kv"
    ready_file: str = ""
    heartbeat_interval: float = 1.0
    # An agent whose stream is open but silent this long is offline.
    offline_after: float = 5.0
    max_attempts: int = 5
    retry_base: float = 2.0
    retry_max: float = 60.0
    max_jobs_per_host: int = 4
    # How long the destination may take to answer READY before the attempt fails.
    ready_timeout: float = 30.0
    schedule_interval: float = 0.5
    # A running attempt with no report from its agents for this long is failed (a hung or lying peer).
    stall_timeout: float = 120.0
    # A running attempt whose agent went offline is held this long (no other attempt of the job starts) for
    # the agent to come back and carry on; the agent stops it itself sooner (this minus the 30 s the gRPC
    # keepalive may take to notice a dead stream). 0: fail such attempts at once.
    attempt_grace: float = 60.0
    # Load policy: a job starts only when both hosts are at or under these (see controller/policy.py).
    max_cpu_percent: float = 85.0
    max_load_per_core: float = 1.5
    max_disk_busy_percent: float = 90.0
    max_net_percent: float = 85.0
    max_health_age: float = 5.0
    free_margin_bytes: int = 1 << 30
    # High-water marks: a running transfer slows down, then pauses, while either end is above one, and
    # speeds up again only once both are back under the start thresholds above (the band between the two
    # is the hysteresis that keeps it from flapping). Each must be at least its start threshold.
    high_cpu_percent: float = 95.0
    high_load_per_core: float = 2.5
    high_disk_busy_percent: float = 98.0
    high_net_percent: float = 95.0
    # Ceilings for single hosts and links, never targets: "HOST:jobs=N,streams=N" (jobs replaces
    # max_jobs_per_host for that host; streams bounds all its running jobs together) and "SRC>DST:streams=N"
    # (all jobs on that link together). Lists in TOML; in ZC_* variables separated by spaces or ";".
    host_limits: tuple[str, ...] = ()
    link_limits: tuple[str, ...] = ()
    # Seconds of waiting that raise a job by one priority level, so nothing waits forever.
    priority_aging: float = 600.0
    # Data-plane encryption for jobs and watch rules that did not ask for it (--encrypt always encrypts):
    # never, always, or cross-site (between agents whose site labels differ or are unset). Per-link
    # overrides "SRC>DST:always|never" (either side may be *) win over it.
    encrypt: str = "never"
    encrypt_links: tuple[str, ...] = ()
    # Lifetime of a watch rule's reusable ticket; the controller rotates it at three quarters of it.
    sync_ticket_ttl: float = 3600.0
    # HOST:PORT of the plaintext Prometheus /metrics port; empty = no metrics port.
    metrics_listen: str = ""
    # HOST:PORT of the read-only web view (HTTPS with the gRPC port's certificate; plain HTTP when insecure);
    # empty = off. http_client_cert "optional": browsers need no certificate, so only a loopback address is
    # allowed (reach it with ssh -L); "required": an operator certificate of the cluster CA, any address.
    http_listen: str = ""
    http_client_cert: str = "optional"
    # HOST:PORT of a plaintext port serving only grpc.health.v1 (for Kubernetes' gRPC probes, which do no
    # TLS); empty = none.
    health_listen: str = ""
    # Several controllers on one PostgreSQL store (see controller/leadership.py): the HOST:PORT agents and
    # zc-ctl reach this controller at (followers name the leader by it); empty: the bound listen address.
    advertise: str = ""
    # The leader checks its lease every lease_renew seconds and stops leading when a check fails or takes longer
    # than lease_timeout; a follower tries to take the lease every lease_poll seconds.
    lease_renew: float = 1.0
    lease_timeout: float = 2.0
    lease_poll: float = 0.5

    @staticmethod
    def resolve_defaults(values: dict[str, Any]) -> dict[str, Any]:
        loopback = "127.0.0.1" if values.get("insecure") else "0.0.0.0"
        values.setdefault("listen", f"{loopback}:{DEFAULT_CONTROLLER_PORT}")
        if not values.get("enroll_listen"):
            host, port = split_address(values["listen"])
            host = f"[{host}]" if ":" in host else host
            values["enroll_listen"] = f"{host}:{DEFAULT_ENROLL_PORT if port else 0}"
        return values

    def validate(self) -> None:  # noqa: C901
        check_tls(self.ca, self.cert, self.key, self.insecure, extra="auto_pki" if self.auto_pki else "")
        split_address(self.listen)
        split_address(self.enroll_listen)
        for extra in (self.metrics_listen, self.health_listen):
            if extra:
                split_address(extra)
        check_http(self.http_listen, self.http_client_cert, self.insecure)
        if self.ca_key and not self.cert:
            raise ConfigError("ca_key is only used with ca, cert and key (with auto_pki the CA lives in state_dir)")
        if not 60 <= self.token_ttl <= 7 * 86400:
            raise ConfigError("token_ttl: choose 60 seconds to 7 days")
        if not 1 <= self.agent_cert_days <= 3650:
            raise ConfigError("agent_cert_days: choose 1 to 3650")
        if self.max_attempts < 1:
            raise ConfigError("max_attempts must be at least 1")
        if self.attempt_grace < 0:
            raise ConfigError("attempt_grace must be 0 (fail at once) or a positive number of seconds")
        if self.heartbeat_interval <= 0 or self.offline_after <= self.heartbeat_interval:
            raise ConfigError("offline_after must be larger than heartbeat_interval (both in seconds, > 0)")
        if self.max_jobs_per_host < 1:
            raise ConfigError("max_jobs_per_host must be at least 1, or no job could ever start")
        for key in ("stall_timeout", "ready_timeout", "schedule_interval", "retry_base", "retry_max",
                    "max_health_age", "priority_aging"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key} must be a positive number of seconds")
        for metric in ("cpu_percent", "load_per_core", "disk_busy_percent", "net_percent"):
            start, high = getattr(self, f"max_{metric}"), getattr(self, f"high_{metric}")
            if start <= 0:
                raise ConfigError(f"max_{metric} must be a positive number")
            if high < start:
                raise ConfigError(f"high_{metric} ({high:g}) must be at least max_{metric} ({start:g}): transfers "
                                  "slow down above the first and speed up again below the second")
        parse_host_limits(self.host_limits)
        parse_link_limits(self.link_limits)
        if self.encrypt not in ENCRYPT_MODES:
            raise ConfigError(f"encrypt {self.encrypt!r}: choose never, always or cross-site")
        parse_encrypt_links(self.encrypt_links)
        if not 2 <= self.sync_ticket_ttl <= 7 * 86400:
            raise ConfigError("sync_ticket_ttl: choose 2 seconds to 7 days")
        if self.log_format not in ("kv", "json"):
            raise ConfigError(f"log_format {self.log_format!r}: choose 'kv' or 'json'")
        if "://" in self.store and not self.store.startswith(("postgresql://", "postgres://")):
            raise ConfigError(f"store {self.store.split('://')[0]}://...: give a SQLite file path or a "
                              "postgresql:// URL")
        if self.advertise:
            split_address(self.advertise)
        if not 0 < self.lease_renew < self.lease_timeout or self.lease_poll <= 0:
            raise ConfigError("lease_renew must be positive and shorter than lease_timeout, and lease_poll positive "
                              "(seconds)")


C = TypeVar("C", AgentConfig, ControllerConfig)


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


def _coerce(name: str, typ: Any, value: Any, source: str) -> Any:  # noqa: C901
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if typ is int:
            if isinstance(value, bool | float):
                raise ValueError(value)
            return int(value)
        if typ is float:
            if isinstance(value, bool):
                raise ValueError(value)
            f = float(value)
            if not math.isfinite(f):
                raise ValueError(value)
            return f
        if typ is str:
            if not isinstance(value, str):
                raise ValueError(value)
            return value
        if typ == tuple[str, ...]:
            if isinstance(value, dict):  # a TOML table of tables: [export_policy."/srv/x"]
                value = table_specs(value)
            items = value.replace(";", " ").split() if isinstance(value, str) else list(value)
            if not all(isinstance(v, str) for v in items):
                raise ValueError(value)
            return tuple(items)
        if typ == tuple[bytes, ...]:
            items = value.split(os.pathsep) if isinstance(value, str) else list(value)
            return tuple(canonical_abs(os.fsencode(os.path.abspath(v))) for v in items if v)
    except InvalidPath as err:
        raise ConfigError(f"{name} from {source}: {err}") from err
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{name} from {source}: {value!r} is not a valid {getattr(typ, '__name__', typ)}") from err
    raise ConfigError(f"{name}: unsupported type {typ}")


def load_config(
    cls: type[C],
    toml_path: str | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> C:
    """Merge the four layers into a validated ``cls``. ``flags`` holds only what was given."""
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    values: dict[str, Any] = {}
    if toml_path:
        try:
            doc = tomllib.loads(Path(toml_path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise ConfigError(f"config file {toml_path}: {err}") from err
        for key, value in doc.items():
            attr = key.replace("-", "_")
            if attr not in known:
                raise ConfigError(f"config file {toml_path}: unknown key {key!r} (known: {', '.join(sorted(known))})")
            values[attr] = _coerce(key, hints[attr], value, toml_path)
    env = os.environ if environ is None else environ
    for attr in known:
        raw = env.get(f"ZC_{attr.upper()}")
        if raw is not None and raw != "":
            values[attr] = _coerce(attr, hints[attr], raw, f"ZC_{attr.upper()}")
    for attr, value in (flags or {}).items():
        if value is None:
            continue
        if attr not in known:
            raise ConfigError(f"unknown setting {attr!r}")
        values[attr] = _coerce(attr, hints[attr], value, f"--{attr.replace('_', '-')}")
    cfg = cls(**cls.resolve_defaults(values))
    cfg.validate()
    return cfg
