"""Tests for zcrepl.controller.store.Store on both backends: the agents it remembers."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import storehelpers
from storehelpers import INFO, sql

from zcrepl.controller.store import Store
from zcrepl.core.types import AgentInfo

# The shared fixtures: pytest finds a fixture by the name of the module attribute holding it.
_no_fd_leak = storehelpers._no_fd_leak
state_dir = storehelpers.state_dir
store = storehelpers.store
reopen = storehelpers.reopen


# -- agents -----------------------------------------------------------------------------------------


def test_agents_round_trip_with_non_utf8_exports(store: Store) -> None:
    store.upsert_agent(INFO, 7.0)
    assert store.agents() == {"hostA": (INFO, 7.0)}
    assert store.agents()["hostA"][0].exports[1] == b"/srv/\xff\xfe odd"


def test_upsert_replaces_info_and_last_seen(store: Store) -> None:
    store.upsert_agent(INFO, 7.0)
    newer = replace(INFO, version="0.2.0", exports=(b"/new",), pid=1)
    store.upsert_agent(newer, 9.0)
    assert store.agents() == {"hostA": (newer, 9.0)}


def test_upsert_keeps_first_seen(store: Store) -> None:
    store.upsert_agent(INFO, 7.0)
    store.upsert_agent(INFO, 9.0)
    assert sql(store, "SELECT first_seen, last_seen FROM agents") == [(7.0, 9.0)]


def test_touch_agent(store: Store) -> None:
    store.upsert_agent(INFO, 7.0)
    store.touch_agent("hostA", 8.0)
    store.touch_agent("unknown", 8.0)
    assert store.agents() == {"hostA": (INFO, 8.0)}


def test_several_agents(store: Store) -> None:
    other = AgentInfo(name="hostB")
    store.upsert_agent(INFO, 1.0)
    store.upsert_agent(other, 2.0)
    assert store.agents() == {"hostA": (INFO, 1.0), "hostB": (other, 2.0)}


def test_remove_agent_forgets_it_for_good(reopen: Any) -> None:
    s = reopen()
    try:
        s.upsert_agent(INFO, 1.0)
        s.upsert_agent(AgentInfo(name="hostB"), 2.0)
        s.remove_agent("hostA")
        s.remove_agent("never-there")
    finally:
        s.close()
    s = reopen()
    try:
        assert set(s.agents()) == {"hostB"}
    finally:
        s.close()
