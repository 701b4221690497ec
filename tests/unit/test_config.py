"""Tests for zcrepl.core.config: defaults < TOML < ZC_* environment < flags, coercion, validate(), split_address."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from zcrepl.core.config import (
    DEFAULT_CONTROLLER,
    AgentConfig,
    ControllerConfig,
    HostLimit,
    load_config,
    parse_host_limits,
    parse_link_limits,
    split_address,
)
from zcrepl.core.errors import ConfigError, UserError


def write_toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "zc.toml"
    path.write_text(text)
    return str(path)


@pytest.fixture
def export(tmp_path: Path) -> Path:
    d = tmp_path / "export"
    d.mkdir()
    return d


def agent(tmp_path: Path, export: Path, toml: str = "", env: dict[str, str] | None = None,
          flags: dict[str, Any] | None = None) -> AgentConfig:
    base = {"name": "hostA", "exports": [str(export)]}
    return load_config(AgentConfig, write_toml(tmp_path, toml) if toml else None, {**base, **(flags or {})},
                       env or {})


# -- precedence -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "env", "flags", "expected"),
    [
        ("", {}, {}, 4),
        ("max_jobs_per_host = 3", {}, {}, 3),
        ("", {"ZC_MAX_JOBS_PER_HOST": "2"}, {}, 2),
        ("", {}, {"max_jobs_per_host": 1}, 1),
        ("max_jobs_per_host = 3", {"ZC_MAX_JOBS_PER_HOST": "2"}, {}, 2),
        ("max_jobs_per_host = 3", {}, {"max_jobs_per_host": 1}, 1),
        ("max_jobs_per_host = 3", {"ZC_MAX_JOBS_PER_HOST": "2"}, {"max_jobs_per_host": 1}, 1),
        ("max_jobs_per_host = 3", {"ZC_MAX_JOBS_PER_HOST": ""}, {}, 3),  # empty env var is unset
        ("max_jobs_per_host = 3", {"ZC_MAX_JOBS_PER_HOST": "2"}, {"max_jobs_per_host": None}, 2),  # flag not given
        ("max-jobs-per-host = 3", {}, {}, 3),  # dashed TOML keys
        ("", {"zc_max_jobs_per_host": "2", "MAX_JOBS_PER_HOST": "2"}, {}, 4),  # only exact ZC_ names count
    ],
    ids=["default", "toml", "env", "flag", "env>toml", "flag>toml", "flag>env>toml", "empty-env", "none-flag",
         "dashed-key", "other-env-names"],
)
def test_precedence(tmp_path: Path, toml: str, env: dict[str, str], flags: dict[str, Any], expected: int) -> None:
    cfg = load_config(ControllerConfig, write_toml(tmp_path, toml) if toml else None, flags, env)
    assert cfg.max_jobs_per_host == expected


def test_layers_merge_per_key(tmp_path: Path) -> None:
    toml = write_toml(tmp_path, 'listen = "127.0.0.1:1"\nstate_dir = "/toml"\nlog_level = "debug"\n')
    env = {"ZC_STATE_DIR": "/env", "ZC_LOG_LEVEL": "warning"}
    cfg = load_config(ControllerConfig, toml, {"log_level": "error"}, env)
    assert (cfg.listen, cfg.state_dir, cfg.log_level) == ("127.0.0.1:1", "/env", "error")
    assert cfg.retry_max == ControllerConfig().retry_max


def test_environ_defaults_to_nothing_when_empty_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    # An explicit environ replaces os.environ entirely (monkeypatch restores the real one).
    monkeypatch.setenv("ZC_MAX_JOBS_PER_HOST", "9")
    assert load_config(ControllerConfig, environ={}).max_jobs_per_host == 4


def test_result_is_frozen() -> None:
    cfg = load_config(ControllerConfig, environ={})
    with pytest.raises(AttributeError):
        cfg.listen = "x:1"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("env", "attr", "expected"),
    [
        ({"ZC_HEARTBEAT_INTERVAL": "0.25"}, "heartbeat_interval", 0.25),
        ({"ZC_OFFLINE_AFTER": "7"}, "offline_after", 7.0),
        ({"ZC_MAX_ATTEMPTS": " 3 "}, "max_attempts", 3),
        ({"ZC_LOG_FORMAT": "json"}, "log_format", "json"),
        ({"ZC_LISTEN": "[::1]:0"}, "listen", "[::1]:0"),
    ],
)
def test_env_values_are_coerced(env: dict[str, str], attr: str, expected: object) -> None:
    value = getattr(load_config(ControllerConfig, environ=env), attr)
    assert value == expected
    assert type(value) is type(expected)


def test_toml_int_accepted_for_float(tmp_path: Path) -> None:
    cfg = load_config(ControllerConfig, write_toml(tmp_path, "offline_after = 9"), environ={})
    assert cfg.offline_after == 9.0
    assert isinstance(cfg.offline_after, float)


# -- TOML errors and bad types ----------------------------------------------------------------------


def test_unknown_toml_key_is_named(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "max_jobs_per_host = 3\nmax_jobs = 4\n")
    with pytest.raises(ConfigError, match=r"unknown key 'max_jobs'") as exc:
        load_config(ControllerConfig, path, environ={})
    assert path in str(exc.value)
    assert "max_jobs_per_host" in str(exc.value)  # lists the known keys


def test_agent_key_in_controller_file_is_unknown(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key 'exports'"):
        load_config(ControllerConfig, write_toml(tmp_path, "exports = ['/srv']"), environ={})


def test_toml_table_is_unknown_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key 'controller'"):
        load_config(ControllerConfig, write_toml(tmp_path, "[controller]\nlisten = '127.0.0.1:1'\n"), environ={})


def test_missing_toml_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file"):
        load_config(ControllerConfig, str(tmp_path / "absent.toml"), environ={})


def test_malformed_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file"):
        load_config(ControllerConfig, write_toml(tmp_path, "listen = \n"), environ={})


@pytest.mark.parametrize(
    ("toml", "env", "flags", "needle"),
    [
        ('max_attempts = "many"', {}, {}, "max_attempts from .*zc.toml"),
        ("max_attempts = true", {}, {}, "max_attempts from"),
        ("listen = 7420", {}, {}, "listen from"),
        ('heartbeat_interval = "fast"', {}, {}, "heartbeat_interval from"),
        ("state_dir = ['/a']", {}, {}, "state_dir from"),
        ("", {"ZC_MAX_ATTEMPTS": "many"}, {}, "max_attempts from ZC_MAX_ATTEMPTS"),
        ("", {"ZC_MAX_ATTEMPTS": "2.5"}, {}, "max_attempts from ZC_MAX_ATTEMPTS"),
        ("", {"ZC_OFFLINE_AFTER": "soon"}, {}, "offline_after from ZC_OFFLINE_AFTER"),
        ("", {}, {"max_jobs_per_host": "x"}, "max_jobs_per_host from --max-jobs-per-host"),
        ("", {}, {"max_jobs_per_host": True}, "max_jobs_per_host from --max-jobs-per-host"),
        ("", {}, {"ready_timeout": [1]}, "ready_timeout from --ready-timeout"),
    ],
)
def test_bad_types(tmp_path: Path, toml: str, env: dict[str, str], flags: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_config(ControllerConfig, write_toml(tmp_path, toml) if toml else None, flags, env)


def test_toml_float_for_int_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_attempts"):
        load_config(ControllerConfig, write_toml(tmp_path, "max_attempts = 2.7"), environ={})


def test_toml_bool_for_float_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="heartbeat_interval"):
        load_config(ControllerConfig, write_toml(tmp_path, "heartbeat_interval = true"), environ={})


@pytest.mark.parametrize("env", [{"ZC_HEARTBEAT_INTERVAL": "nan"}, {"ZC_OFFLINE_AFTER": "nan"}])
def test_nan_interval_is_refused(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        load_config(ControllerConfig, environ=env)


def test_config_error_is_user_error() -> None:
    with pytest.raises(UserError):
        load_config(ControllerConfig, environ={"ZC_LISTEN": "nope"})


# -- exports ----------------------------------------------------------------------------------------


def test_exports_from_env_split_on_pathsep(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    env = {"ZC_EXPORTS": f"{a}{os.pathsep}{os.pathsep}{b}/", "ZC_NAME": "h"}
    cfg = load_config(AgentConfig, environ=env)
    assert cfg.exports == (os.fsencode(a), os.fsencode(b))


def test_exports_from_toml_list(tmp_path: Path, export: Path) -> None:
    cfg = load_config(AgentConfig, write_toml(tmp_path, f"name = 'h'\nexports = ['{export}/']\n"), environ={})
    assert cfg.exports == (os.fsencode(export),)


def test_exports_flag_overrides_env(tmp_path: Path, export: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    cfg = load_config(AgentConfig, None, {"exports": [str(other)]}, {"ZC_EXPORTS": str(export), "ZC_NAME": "h"})
    assert cfg.exports == (os.fsencode(other),)


def test_relative_export_becomes_absolute(tmp_path: Path, export: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(AgentConfig, None, {"name": "h", "exports": ["export"]}, {})
    assert cfg.exports == (os.fsencode(export),)


def test_non_utf8_export_from_env(tmp_path: Path) -> None:
    raw = os.fsencode(tmp_path) + b"/d\xff"
    os.mkdir(raw)
    cfg = load_config(AgentConfig, environ={"ZC_EXPORTS": os.fsdecode(raw), "ZC_NAME": "h"})
    assert cfg.exports == (raw,)


@pytest.mark.parametrize("bad", [5, [1]])
def test_exports_bad_type(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ConfigError, match="exports"):
        load_config(AgentConfig, None, {"name": "h", "exports": bad}, {})


@pytest.mark.parametrize(
    ("toml", "flags"),
    [("", {"exports": ["/" + "a" * 5000]}), ('exports = ["/srv/\\u0000x"]', {})],
    ids=["too-long-flag", "nul-in-toml"],
)
def test_bad_export_path_is_config_error(tmp_path: Path, toml: str, flags: dict[str, Any]) -> None:
    # zc-agent's main() catches only ConfigError, so anything else is a traceback for the operator.
    with pytest.raises(ConfigError, match="exports from"):
        load_config(AgentConfig, write_toml(tmp_path, toml) if toml else None, {"name": "h", **flags}, {})


# -- validate ---------------------------------------------------------------------------------------


def test_agent_config_valid(tmp_path: Path, export: Path) -> None:
    cfg = agent(tmp_path, export)
    assert cfg.name == "hostA"
    assert cfg.controller == DEFAULT_CONTROLLER


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        ({"exports": []}, "no export configured"),
        ({"exports": ["/nonexistent/zcrepl-test"]}, "not an existing directory"),
        ({"name": "bad name"}, "name 'bad name'"),
        ({"name": "x" * 254}, "name"),
        ({"name": "host\n"}, "name"),
        ({"name": ""}, "name"),
        ({"controller": "nope"}, "address 'nope'"),
        ({"controller": "host:"}, "address"),
        ({"listen": ":7421"}, "address"),
        ({"data_listen": "h:65536"}, "address"),
        ({"data_listen": "h:-1"}, "address"),
        ({"log_format": "xml"}, "log_format 'xml'"),
    ],
)
def test_agent_validate_errors(tmp_path: Path, export: Path, flags: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        agent(tmp_path, export, flags=flags)


def test_export_that_is_a_file(tmp_path: Path, export: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError, match="not an existing directory"):
        agent(tmp_path, export, flags={"exports": [str(export), str(f)]})


def test_validate_directly() -> None:
    with pytest.raises(ConfigError, match="no export"):
        AgentConfig(name="h").validate()


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"ZC_HEARTBEAT_INTERVAL": "5", "ZC_OFFLINE_AFTER": "5"}, "offline_after must be larger"),
        ({"ZC_HEARTBEAT_INTERVAL": "5", "ZC_OFFLINE_AFTER": "4"}, "offline_after must be larger"),
        ({"ZC_HEARTBEAT_INTERVAL": "0"}, "offline_after must be larger"),
        ({"ZC_HEARTBEAT_INTERVAL": "-1", "ZC_OFFLINE_AFTER": "-0.5"}, "offline_after must be larger"),
        ({"ZC_MAX_ATTEMPTS": "0"}, "max_attempts"),
        ({"ZC_LISTEN": "0.0.0.0"}, "address"),
        ({"ZC_LOG_FORMAT": "text"}, "log_format"),
    ],
)
def test_controller_validate_errors(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_config(ControllerConfig, environ=env)


def test_controller_offline_after_just_above_heartbeat() -> None:
    cfg = load_config(ControllerConfig, environ={"ZC_HEARTBEAT_INTERVAL": "5", "ZC_OFFLINE_AFTER": "5.001"})
    assert cfg.offline_after > cfg.heartbeat_interval


# -- split_address ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        ("127.0.0.1:7420", ("127.0.0.1", 7420)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("localhost:65535", ("localhost", 65535)),
        ("[::1]:7420", ("::1", 7420)),
        ("[::]:0", ("::", 0)),
        ("ctl.example.com:1", ("ctl.example.com", 1)),
    ],
)
def test_split_address(addr: str, expected: tuple[str, int]) -> None:
    assert split_address(addr) == expected


@pytest.mark.parametrize("addr", ["", "host", "host:", ":7420", "host:port", "host:65536", "host:-1", "host:+1",
                                  "host:1.5", "host: 1"])
def test_split_address_refuses(addr: str) -> None:
    with pytest.raises(ConfigError, match="HOST:PORT"):
        split_address(addr)


# -- high-water marks and per-host / per-link limits ------------------------------------------------


def test_high_water_marks_from_each_layer(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("high_cpu_percent = 97\nhigh_load_per_core = 3\n")
    cfg = load_config(ControllerConfig, str(f), {"high_net_percent": 99.0}, {"ZC_HIGH_DISK_BUSY_PERCENT": "99.5"})
    assert (cfg.high_cpu_percent, cfg.high_load_per_core, cfg.high_disk_busy_percent, cfg.high_net_percent) == (
        97.0, 3.0, 99.5, 99.0)
    assert ControllerConfig().high_cpu_percent == 95.0  # the defaults are the former fixed marks


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"ZC_MAX_CPU_PERCENT": "96"}, r"high_cpu_percent \(95\) must be at least max_cpu_percent \(96\)"),
        ({"ZC_HIGH_LOAD_PER_CORE": "1"}, r"high_load_per_core \(1\) must be at least max_load_per_core \(1.5\)"),
        ({"ZC_MAX_DISK_BUSY_PERCENT": "0"}, "max_disk_busy_percent must be a positive number"),
        ({"ZC_HOST_LIMITS": "nas1:jobs=0"}, "host_limits 'nas1:jobs=0': write HOST:jobs=N,streams=N"),
        ({"ZC_HOST_LIMITS": "nas1:cores=2"}, "host_limits 'nas1:cores=2'"),
        ({"ZC_HOST_LIMITS": "nas1"}, "host_limits 'nas1'"),
        ({"ZC_HOST_LIMITS": "nas1:jobs=2,jobs=3"}, "host_limits 'nas1:jobs=2,jobs=3'"),
        ({"ZC_HOST_LIMITS": "nas1:jobs=2 nas1:streams=3"}, "nas1 appears twice"),
        ({"ZC_HOST_LIMITS": "bad/name:jobs=2"}, "not an agent name"),
        ({"ZC_LINK_LIMITS": "a>b:jobs=2"}, "link_limits 'a>b:jobs=2': write SRC>DST:streams=N"),
        ({"ZC_LINK_LIMITS": "a:streams=2"}, "two different agent names"),
        ({"ZC_LINK_LIMITS": "a>a:streams=2"}, "two different agent names"),
        ({"ZC_LINK_LIMITS": "a>b:streams=1;a>b:streams=2"}, "a>b appears twice"),
    ],
)
def test_bad_thresholds_and_limits(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_config(ControllerConfig, environ=env)


def test_host_and_link_limits_from_toml_env_and_flags(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('host_limits = ["nas1:jobs=8,streams=16", "web3:streams=2"]\nlink_limits = ["a>b:streams=3"]\n')
    cfg = load_config(ControllerConfig, str(f))
    assert parse_host_limits(cfg.host_limits) == {"nas1": HostLimit(jobs=8, streams=16), "web3": HostLimit(streams=2)}
    assert parse_link_limits(cfg.link_limits) == {("a", "b"): 3}
    env = load_config(ControllerConfig, str(f), environ={"ZC_HOST_LIMITS": "x:jobs=1; y:jobs=2"})
    assert parse_host_limits(env.host_limits) == {"x": HostLimit(jobs=1), "y": HostLimit(jobs=2)}
    flags = load_config(ControllerConfig, str(f), {"link_limits": ["b>a:streams=1"]})
    assert parse_link_limits(flags.link_limits) == {("b", "a"): 1}
    with pytest.raises(ConfigError, match="link_limits"):
        f.write_text("link_limits = [1]\n")
        load_config(ControllerConfig, str(f))


def test_controller_flags_for_high_marks_and_limits() -> None:
    from zcrepl.controller.main import build_parser

    args = build_parser().parse_args(["--high-cpu-percent", "97", "--host-limit", "a:jobs=1", "--host-limit",
                                      "b:streams=2", "--link-limit", "a>b:streams=3"])
    flags = {k: v for k, v in vars(args).items() if k != "config" and v is not None}
    cfg = load_config(ControllerConfig, None, flags, {})
    assert cfg.high_cpu_percent == 97.0
    assert parse_host_limits(cfg.host_limits) == {"a": HostLimit(jobs=1), "b": HostLimit(streams=2)}
    assert parse_link_limits(cfg.link_limits) == {("a", "b"): 3}


@pytest.mark.parametrize("cls", [ControllerConfig, AgentConfig])
def test_metrics_listen_is_off_by_default_and_checked(cls: Any, tmp_path: Path) -> None:
    base = {"insecure": True, **({"exports": str(tmp_path)} if cls is AgentConfig else {})}
    assert load_config(cls, None, base, {}).metrics_listen == ""
    toml = tmp_path / "c.toml"
    toml.write_text('metrics_listen = "0.0.0.0:9470"\n')
    assert load_config(cls, str(toml), base, {}).metrics_listen == "0.0.0.0:9470"
    assert load_config(cls, str(toml), base, {"ZC_METRICS_LISTEN": "127.0.0.1:0"}).metrics_listen == "127.0.0.1:0"
    with pytest.raises(ConfigError, match="'9470' is not HOST:PORT"):
        load_config(cls, None, {**base, "metrics_listen": "9470"}, {})
