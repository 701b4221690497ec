"""Settings defined once (zcrepl.core.settings): a field's declaration is its flag, TOML key, ZC_ variable, --help
line and check; the daemons' parsers are generated from AgentConfig and ControllerConfig."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from zcrepl.agent.main import build_parser as agent_parser
from zcrepl.controller.main import build_parser as controller_parser
from zcrepl.controller.policy import DEFAULTS
from zcrepl.core.config import AgentConfig, ControllerConfig, Thresholds
from zcrepl.core.errors import ConfigError
from zcrepl.core.settings import at_least, build_parser, given, load_config, setting, spec_of


@dataclasses.dataclass(frozen=True)
class Extended(ControllerConfig):
    """A controller with one more setting, declared the one way a setting is declared."""

    drain_timeout: float = setting(42.0, "how long a drain may take", metavar="SECONDS", check=at_least(1))


def test_a_new_field_is_a_flag_a_toml_key_and_an_env_var(tmp_path: Path) -> None:
    parser = build_parser(Extended, "zc-controller", None)
    assert "--drain-timeout SECONDS how long a drain may take (default 42)" in " ".join(parser.format_help().split())
    assert load_config(Extended, environ={}).drain_timeout == 42.0
    toml = tmp_path / "c.toml"
    toml.write_text("drain_timeout = 7\n")
    assert load_config(Extended, str(toml), environ={}).drain_timeout == 7.0
    assert load_config(Extended, str(toml), environ={"ZC_DRAIN_TIMEOUT": "8"}).drain_timeout == 8.0
    flags = given(parser.parse_args(["--drain-timeout", "9"]))
    assert load_config(Extended, str(toml), flags, {"ZC_DRAIN_TIMEOUT": "8"}).drain_timeout == 9.0
    with pytest.raises(ConfigError, match="drain_timeout must be at least 1"):
        load_config(Extended, None, {"drain_timeout": "0.5"}, {})
    with pytest.raises(ConfigError, match="drain_timeout from --drain-timeout: 'soon' is not a valid float"):
        load_config(Extended, None, given(parser.parse_args(["--drain-timeout", "soon"])), {})


@pytest.mark.parametrize("cls", [AgentConfig, ControllerConfig])
def test_every_setting_is_explained_and_has_a_flag(cls: Any) -> None:
    parser = build_parser(cls, "zc", None)
    dests = {a.dest for a in parser._actions}
    for f in dataclasses.fields(cls):
        assert spec_of(f).help, f"{cls.__name__}.{f.name} has no help text: declare it with setting(..., help)"
        assert f.name in dests


# Every flag the hand-written parsers had (before the settings were defined once): scripts and units use them.
CONTROLLER_FLAGS = [
    "--listen 127.0.0.1:0", "--state-dir /s", "--store /s/db", "--ca a", "--cert b", "--key c", "--crl d",
    "--ca-key e", "--auto-pki", "--san x", "--enroll-listen 127.0.0.1:0", "--token-ttl 60", "--agent-cert-days 2",
    "--insecure", "--heartbeat-interval 1", "--offline-after 3", "--max-attempts 2", "--retry-base 1",
    "--retry-max 2", "--max-jobs-per-host 3", "--stall-timeout 9", "--attempt-grace 0", "--max-cpu-percent 80",
    "--max-load-per-core 1", "--max-disk-busy-percent 80", "--max-net-percent 80", "--high-cpu-percent 90",
    "--high-load-per-core 2", "--high-disk-busy-percent 90", "--high-net-percent 90", "--host-limit a:jobs=1",
    "--link-limit a>b:streams=1", "--encrypt always", "--encrypt-link a>b:never", "--sync-ticket-ttl 9",
    "--metrics-listen 127.0.0.1:0", "--http-listen 127.0.0.1:0", "--http-client-cert required",
    "--health-listen 127.0.0.1:0", "--log-level debug", "--log-format json", "--ready-file r",
]
AGENT_FLAGS = [
    "--name h", "--controller c:1", "--export /e", "--export-policy /e:owners=keep", "--listen 127.0.0.1:0",
    "--data-listen 127.0.0.1:0", "--ca a", "--cert b", "--key c", "--crl d", "--join t", "--state-dir /s",
    "--insecure", "--io-timeout 5", "--advertise-host h", "--site s", "--source-address 10.0.0.1",
    "--metrics-listen 127.0.0.1:0", "--health-listen 127.0.0.1:0", "--log-level debug", "--log-format json",
    "--ready-file r",
]


@pytest.mark.parametrize(("parser", "argv"), [(controller_parser, CONTROLLER_FLAGS), (agent_parser, AGENT_FLAGS)],
                         ids=["controller", "agent"])
def test_every_former_flag_still_parses(parser: Any, argv: list[str]) -> None:
    flags = given(parser().parse_args(" ".join(argv).split()))
    assert len(flags) == len(argv)
    assert flags.get("exports", ["/e"]) == ["/e"] and flags.get("host_limits", ["a:jobs=1"]) == ["a:jobs=1"]


def test_load_thresholds_are_the_controllers_settings() -> None:
    # One declaration: the policy's defaults are the config's, and the config is what the engine judges with.
    cfg = load_config(ControllerConfig, None, {"max_cpu_percent": "70", "min_bwlimit": "4096"}, {})
    assert isinstance(cfg, Thresholds)
    assert (cfg.max_cpu_percent, cfg.min_bwlimit) == (70.0, 4096)
    for f in dataclasses.fields(Thresholds):
        assert getattr(DEFAULTS, f.name) == getattr(ControllerConfig(), f.name)
    with pytest.raises(ConfigError, match="slow_factor and free_margin_fraction must be < 1"):
        load_config(ControllerConfig, None, {"slow_factor": "1.5"}, {})


def test_choices_are_checked_in_every_layer(tmp_path: Path) -> None:
    toml = tmp_path / "a.toml"
    toml.write_text(f'name = "h"\nexports = ["{tmp_path}"]\ntransfer_ioclass = "realtime"\n')
    with pytest.raises(ConfigError, match="transfer_ioclass 'realtime': choose none, best-effort or idle"):
        load_config(AgentConfig, str(toml), environ={})
    with pytest.raises(ConfigError, match="log_level 'loud': choose debug, info, warning or error"):
        load_config(ControllerConfig, environ={"ZC_LOG_LEVEL": "loud"})
    with pytest.raises(SystemExit):
        controller_parser().parse_args(["--log-level", "loud"])
