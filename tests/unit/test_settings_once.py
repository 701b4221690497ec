"""Settings are defined once, in AgentConfig and ControllerConfig: what the daemons build from a config either has
no default of its own, or has the config's (so a changed default changes the behaviour everywhere)."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import pytest

from zcrepl.agent.attempts import Attempts
from zcrepl.agent.transfer import partial
from zcrepl.agent.transfer.limits import SessionLimits
from zcrepl.agent.transfer.sendio import SendSpec
from zcrepl.agent.transfer.server import DataServer
from zcrepl.agent.watchrule_source import SourceRule
from zcrepl.agent.watchrules import WatchRules
from zcrepl.controller.compression import CompressPolicy
from zcrepl.controller.lifecycle import RetryPolicy
from zcrepl.controller.scheduler import Policy
from zcrepl.core.config import AgentConfig, ControllerConfig
from zcrepl.core.settings import default_of

AGENT = {f.name for f in dataclasses.fields(AgentConfig)}


@pytest.mark.parametrize("built", [DataServer, Attempts, WatchRules, SourceRule], ids=lambda c: c.__name__)
def test_what_the_agent_builds_from_its_config_has_no_default_of_a_setting(built: Callable[..., Any]) -> None:
    copies = [p.name for p in inspect.signature(built).parameters.values()
              if p.name in AGENT and p.default is not inspect.Parameter.empty]
    assert copies == [], f"{built.__name__} gives {copies} a default of its own: take them from AgentConfig"


def test_value_objects_built_without_a_config_hold_the_configs_defaults() -> None:
    agent, controller = AgentConfig(), ControllerConfig()
    assert SessionLimits() == SessionLimits.from_config(agent)
    assert {f.name: f.default for f in dataclasses.fields(SendSpec)}["io_timeout"] == agent.io_timeout
    assert agent.partial_max_age == partial.MAX_AGE
    assert RetryPolicy() == RetryPolicy(controller.max_attempts, controller.retry_base, controller.retry_max)
    policy = Policy()
    assert (policy.max_jobs_per_host, policy.aging) == (controller.max_jobs_per_host, controller.priority_aging)
    assert CompressPolicy().mode == controller.compress


def test_default_of_names_a_missing_setting() -> None:
    with pytest.raises(KeyError, match="no setting 'nope'"):
        default_of(AgentConfig, "nope")
