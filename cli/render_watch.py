"""How zc-ctl shows watch rules: a JSON document per rule for scripts, a rich table for people."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from zcrepl.cli.render import ago
from zcrepl.core.paths import show
from zcrepl.core.units import size
from zcrepl.core.watchtypes import WatchPhase, WatchRule

if TYPE_CHECKING:  # watch_rules_table imports it: JSON output never loads rich
    from rich.table import Table


def _ep(host: str, path: bytes) -> str:
    return f"{host}:{show(path)}"


def watch_rule_doc(r: WatchRule) -> dict[str, Any]:
    return {
        "id": r.id, "state": r.state.value, "phase": r.phase.value, "status": r.status,
        "source": _ep(r.source.host, r.source.path),
        "destinations": [_ep(d.host, d.path) for d in r.destinations],
        "options": {**{k: v for k, v in asdict(r.options).items() if k not in ("backup_dir", "link_dest")},
                    "durability": r.options.durability.value},
        "window": r.window, "quiet": r.quiet, "created_at": r.created_at,
        "lag": r.lag, "pending": r.pending, "counters": asdict(r.counters),
        "last_error": r.last_error, "last_error_at": r.last_error_at, "last_shipped_at": r.last_shipped_at,
    }


def lag_text(r: WatchRule) -> str:
    if r.phase in (WatchPhase.PAUSED, WatchPhase.WAITING, WatchPhase.FAILED):
        return "-"
    if not r.pending:
        return "0"
    return f"{r.lag * 1000:.0f} ms" if r.lag < 10 else f"{r.lag:.0f} s"


def watch_rules_table(rules: list[WatchRule]) -> Table:
    from rich.markup import escape
    from rich.table import Table

    t = Table(title="watch rules", title_justify="left")
    for col in ("ID", "STATUS", "SOURCE", "DESTINATIONS", "LAG", "PENDING", "SHIPPED", "LAST SHIP", "LAST ERROR"):
        if col in ("STATUS", "LAST ERROR"):
            t.add_column(col, overflow="ellipsis", no_wrap=True, max_width=40)
        elif col in ("SOURCE", "DESTINATIONS"):
            t.add_column(col, min_width=24, overflow="fold")
        else:
            t.add_column(col, no_wrap=True)
    now = time.time()
    for r in rules:
        c = r.counters
        color = {WatchPhase.WATCHING: "green", WatchPhase.FAILED: "red"}.get(r.phase, "yellow")
        shipped = (f"{c.files} files ({size(c.bytes)}), {c.renamed} renamed, {c.deleted} deleted, "
                   f"{c.reconciles} scans" + (f", {c.skipped} skipped" if c.skipped else ""))
        err = f"{escape(r.last_error)} ({ago(r.last_error_at, now)})" if r.last_error else ""
        status = "failed" if r.phase is WatchPhase.FAILED else r.status  # the error has its own column
        t.add_row(str(r.id), f"[{color}]{escape(status)}[/]", escape(_ep(r.source.host, r.source.path)),
                  escape(", ".join(_ep(d.host, d.path) for d in r.destinations)), lag_text(r), str(r.pending),
                  shipped, ago(r.last_shipped_at, now), err)
    return t
