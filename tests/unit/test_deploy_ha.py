"""deploy/ha/: the three-controller example loads, per host through its environment file, and the agent's list."""

from __future__ import annotations

from pathlib import Path

from zcrepl.core.config import AgentConfig, ControllerConfig, controller_list, load_config

HA = Path(__file__).resolve().parents[2] / "deploy" / "ha"


def _env() -> dict[str, str]:
    return dict(line.split("=", 1) for line in (HA / "zc-controller.env").read_text().splitlines()
                if line and not line.startswith("#"))


def test_controller_example_loads_with_its_host_environment(tmp_path: Path) -> None:
    env = _env()
    assert env["ZC_ADVERTISE"] == "ctl-a.example:7420"
    cfg = load_config(ControllerConfig, str(HA / "controller.toml"), environ=env)
    assert cfg.store.startswith("postgresql://") and not cfg.auto_pki
    assert cfg.advertise == "ctl-a.example:7420" and cfg.cert.endswith("ctl-a.pem")
    assert (cfg.lease_renew, cfg.lease_timeout, cfg.lease_poll) == (1.0, 2.0, 0.5)


def test_agent_example_lists_the_three(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    cfg = load_config(AgentConfig, str(HA / "agent.toml"), environ={"ZC_EXPORTS": str(tmp_path / "data")})
    assert controller_list(cfg.controller) == ["ctl-a.example:7420", "ctl-b.example:7420", "ctl-c.example:7420"]
