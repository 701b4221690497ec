"""Several controllers on one PostgreSQL store (issue 15): a Cluster with controllers controller, controller2, ...
whose agents and zc-ctl get the whole list, and a way to tell which one leads (its log says so)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from zchelpers import Cluster, Daemon, free_port, wait_for

LEADS = "leading: this controller holds the lease"
STOPS = "stopped leading"
SERVING = "controller serving"  # logged at start, before the lease is first tried


def pg_database(pg_server: Any) -> tuple[str, str]:
    """A database of its own on the session's server (the per-test one is emptied by other tests): (name, URL)."""
    name = f"zc_ha_{uuid.uuid4().hex[:8]}"
    pg_server.admin(f"CREATE DATABASE {name} TEMPLATE template0")
    return name, pg_server.url(name)


def drop_database(pg_server: Any, name: str) -> None:
    pg_server.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def ha_cluster(base: Path, store: str, controllers: int = 3, **flags: Any) -> Cluster:
    """A Cluster whose ``controller_addr`` lists ``controllers`` controllers on ``store`` (none started)."""
    c = Cluster(base, store=store, **flags)
    first = c.daemons["controller"]
    addrs = [c.controller_addr]
    for i in range(2, controllers + 1):
        addr = f"127.0.0.1:{free_port()}"
        argv = list(first.argv)
        for flag, value in (("--listen", addr), ("--state-dir", str(base / f"state{i}")),
                            ("--ready-file", str(base / f"controller{i}.json"))):
            argv[argv.index(flag) + 1] = value
        c.daemons[f"controller{i}"] = Daemon(f"controller{i}", argv, base / f"controller{i}.json",
                                             base / f"controller{i}.log")
        addrs.append(addr)
    c.controller_addr = ",".join(addrs)
    return c


def controllers(c: Cluster) -> list[Daemon]:
    return [d for name, d in c.daemons.items() if name.startswith("controller")]


def address(d: Daemon) -> str:
    return str(d.ready["grpc"])


def leads(d: Daemon) -> bool:
    """Whether ``d`` runs and its log's last word on leadership is that it leads."""
    if d.proc is None or d.proc.poll() is not None:
        return False
    text = d.log()
    text = text[text.rfind(SERVING):]  # this run's lines: a restarted controller appends to its log
    return text.rfind(LEADS) > text.rfind(STOPS)


def leader(c: Cluster, timeout: float = 30.0) -> Daemon:
    found: list[Daemon] = wait_for(lambda: [d for d in controllers(c) if leads(d)], timeout, what="a leader")
    assert len(found) == 1, f"several controllers lead at once: {[d.name for d in found]}"
    return found[0]
