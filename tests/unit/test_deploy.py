"""The shipped example configs load, and the systemd units start the installed commands."""

from __future__ import annotations

import configparser
import tomllib
from pathlib import Path

from zcrepl.core.config import AgentConfig, ControllerConfig, load_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_example_controller_config_loads() -> None:
    cfg = load_config(ControllerConfig, str(DEPLOY / "controller.toml"), environ={})
    assert cfg.state_dir == "/var/lib/zcrepl" and cfg.max_attempts == 5


def test_example_postgres_controller_config_loads() -> None:
    cfg = load_config(ControllerConfig, str(DEPLOY / "controller-postgres.toml"), environ={})
    assert cfg.store.startswith("postgresql://zcrepl@") and ":" not in cfg.store.split("@")[0][len("postgresql://"):]


def test_example_agent_config_loads(tmp_path: Path) -> None:
    doc = tomllib.loads((DEPLOY / "agent.toml").read_text())
    exports = [tmp_path / Path(e).name for e in doc["exports"]]
    for e in exports:
        e.mkdir()
    # Same file; the exports are redirected through the environment layer because /srv may not exist here.
    env = {"ZC_EXPORTS": ":".join(map(str, exports))}
    cfg = load_config(AgentConfig, str(DEPLOY / "agent.toml"), environ=env)
    assert cfg.name == "hostA" and cfg.data_listen == "0.0.0.0:7422"
    assert cfg.exports == tuple(bytes(str(e), "utf-8") for e in exports)
    assert set(doc) <= {f for f in AgentConfig.__dataclass_fields__}


def test_systemd_units_run_the_console_scripts() -> None:
    for unit, cmd, conf in (("zc-agent.service", "zc-agent", "agent.toml"),
                            ("zc-controller.service", "zc-controller", "controller.toml")):
        p = configparser.ConfigParser(strict=False, interpolation=None)
        p.read(DEPLOY / unit)
        exec_start = p["Service"]["ExecStart"]
        assert exec_start.split()[0].endswith("/" + cmd) and conf in exec_start
        assert p["Service"]["KillSignal"] == "SIGTERM"
        assert p["Install"]["WantedBy"] == "multi-user.target"
