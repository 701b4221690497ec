"""Typed daemon configuration: defaults < TOML file < ``ZC_*`` environment < command-line flags.

Everything is validated once at start; a bad value raises ConfigError naming the key and its source.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

from zcrepl.core.errors import ConfigError, InvalidPath
from zcrepl.core.paths import canonical_abs, valid_host_name

DEFAULT_CONTROLLER_PORT = 7420
DEFAULT_AGENT_PORT = 7421
DEFAULT_DATA_PORT = 7422
DEFAULT_CONTROLLER = f"127.0.0.1:{DEFAULT_CONTROLLER_PORT}"


@dataclass(frozen=True)
class AgentConfig:
    name: str = dataclasses.field(default_factory=lambda: socket.gethostname().split(".")[0])
    controller: str = DEFAULT_CONTROLLER
    exports: tuple[bytes, ...] = ()
    listen: str = f"0.0.0.0:{DEFAULT_AGENT_PORT}"
    data_listen: str = f"0.0.0.0:{DEFAULT_DATA_PORT}"
    # Host the agent advertises for its ports when they listen on a wildcard address; empty means the
    # local address this host uses to reach the controller.
    advertise_host: str = ""
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

    def validate(self) -> None:
        if not valid_host_name(self.name):
            raise ConfigError(f"name {self.name!r}: use letters, digits, '.', '_' and '-' (at most 63)")
        if not self.exports:
            raise ConfigError("no export configured: pass --export DIR (repeatable) or 'exports = [...]' in TOML")
        for addr in (self.controller, self.listen, self.data_listen):
            split_address(addr)
        for exp in self.exports:
            if not os.path.isdir(exp):
                raise ConfigError(f"export {os.fsdecode(exp)!r} is not an existing directory; create it first")
        if self.log_format not in ("kv", "json"):
            raise ConfigError(f"log_format {self.log_format!r}: choose 'kv' or 'json'")
        if not 0 <= self.transfer_nice <= 19:
            raise ConfigError(f"transfer_nice {self.transfer_nice}: choose 0 (unchanged) to 19 (lowest)")
        if self.transfer_ioclass not in ("none", "best-effort", "idle"):
            raise ConfigError(f"transfer_ioclass {self.transfer_ioclass!r}: choose none, best-effort or idle")
        if not 0 <= self.transfer_iolevel <= 7:
            raise ConfigError(f"transfer_iolevel {self.transfer_iolevel}: choose 0 (high) to 7 (low)")


@dataclass(frozen=True)
class ControllerConfig:
    listen: str = f"0.0.0.0:{DEFAULT_CONTROLLER_PORT}"
    state_dir: str = "/var/lib/zcrepl"
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
    # Load policy: a job starts only when both hosts are at or under these (see controller/policy.py).
    max_cpu_percent: float = 85.0
    max_load_per_core: float = 1.5
    max_disk_busy_percent: float = 90.0
    max_net_percent: float = 85.0
    max_health_age: float = 5.0
    free_margin_bytes: int = 1 << 30
    # Seconds of waiting that raise a job by one priority level, so nothing waits forever.
    priority_aging: float = 600.0

    def validate(self) -> None:
        split_address(self.listen)
        if self.max_attempts < 1:
            raise ConfigError("max_attempts must be at least 1")
        if self.heartbeat_interval <= 0 or self.offline_after <= self.heartbeat_interval:
            raise ConfigError("offline_after must be larger than heartbeat_interval (both in seconds, > 0)")
        if self.max_jobs_per_host < 1:
            raise ConfigError("max_jobs_per_host must be at least 1, or no job could ever start")
        for key in ("stall_timeout", "ready_timeout", "schedule_interval", "retry_base", "retry_max",
                    "max_cpu_percent", "max_load_per_core", "max_disk_busy_percent", "max_net_percent",
                    "max_health_age", "priority_aging"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key} must be a positive number of seconds")
        if self.log_format not in ("kv", "json"):
            raise ConfigError(f"log_format {self.log_format!r}: choose 'kv' or 'json'")


C = TypeVar("C", AgentConfig, ControllerConfig)


def split_address(addr: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) -> (host, port); port 0 asks for a free port."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"address {addr!r} is not HOST:PORT (for example 127.0.0.1:{DEFAULT_AGENT_PORT})")
    return host.strip("[]"), int(port)


def _coerce(name: str, typ: Any, value: Any, source: str) -> Any:
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
    cfg = cls(**values)
    cfg.validate()
    return cfg
