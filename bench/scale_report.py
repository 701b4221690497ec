"""bench/scale.py's report: targets, the tables of a run (rich on the terminal, Markdown in bench/results) and where
they are saved. See scale.py for what is measured."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

TARGET_P99_MS = 50.0
TARGET_CORES = 0.5
TARGET_PLAN_MS = 100.0
POLL_EVERY = 0.5  # ListAgents cadence: twice per heartbeat, so each heartbeat is the latest at >= 1 poll
ENGINE_PASSES = 5  # Engine.tick() passes with the store: the first writes for every job, the others little


def history_table(h: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    return ["metric", "measured"], [
        ["agents x samples kept", f"{h['agents']:,} x {h['kept'] // h['agents']:,}"],
        ["RSS growth MiB (bytes per sample)", f"{h['rss_mib']:,.0f} ({h['bytes_per_sample']:,.0f})"],
        ["GC-tracked objects", f"{h['tracked_objects']:,}"],
        ["full gc.collect() ms (median of 3; the event loop waits this long)", f"{h['full_gc_ms']:,.0f}"],
    ]


# -- report ---------------------------------------------------------------------------------------
def mark(value: float, target: float) -> str:
    return "pass" if value < target else "MISS"


def heartbeat_metrics(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(metric, target, measured) for one agent count."""
    lat, calm, lag, la = r["latency_ms"], r["latency_ms_outside_polls"], r["send_lag_ms"], r["list_agents_ms"]
    q, p = r["quiet"], r["polled"]
    return [
        ("agents registered (registration s)", "", f"{r['connected']:,} ({r['connect_seconds']:.1f})"),
        ("heartbeats sent / observed in window", "",
         f"{r['sent']:,} / {r['observed']:,} ({r['observed'] / max(1, r['sent']):.1%})"),
        ("heartbeat latency p50 ms", "", f"{lat['p50']:.1f}"),
        ("heartbeat latency p90 ms", "", f"{lat['p90']:.1f}"),
        ("heartbeat latency p99 ms", f"< {TARGET_P99_MS:.0f}", f"{lat['p99']:.1f} {mark(lat['p99'], TARGET_P99_MS)}"),
        ("heartbeat latency max ms", "", f"{lat['max']:.1f}"),
        ("p99 / max ms of beats sent outside a ListAgents call", "", f"{calm['p99']:.1f} / {calm['max']:.1f}"),
        *gc_metrics(r),
        ("controller CPU cores, heartbeats only (quiet window)", f"< {TARGET_CORES}",
         f"{q['controller_cores']:.3f} {mark(q['controller_cores'], TARGET_CORES)}"),
        (f"controller CPU cores, with ListAgents every {POLL_EVERY} s", "", f"{p['controller_cores']:.3f}"),
        ("controller RSS / peak MiB", "", f"{r['controller_rss_mib']:.0f} / {r['controller_hwm_mib']:.0f}"),
        ("ListAgents round trip p50 / max ms (response KiB)", "",
         f"{la['p50']:.0f} / {la['max']:.0f} ({r['list_agents_bytes'] / 1024:.0f})"),
        ("simulator CPU cores polled / quiet (RSS MiB)", "< 0.9 (validity)",
         f"{p['simulator_cores']:.2f} / {q['simulator_cores']:.2f} ({r['simulator_rss_mib']:.0f})"),
        ("simulator send lag p99 / max ms", "", f"{lag['p99']:.1f} / {lag['max']:.1f}"),
        ("poller (this process) CPU cores", "", f"{p['poller_cores']:.2f}"),
        (f"machine busy cores polled / quiet (of {os.cpu_count()})", "",
         f"{p['machine_cores']:.2f} / {q['machine_cores']:.2f}"),
        ("rest of the machine (others, kernel) cores polled / quiet", "",
         f"{p['other_cores']:.2f} / {q['other_cores']:.2f}"),
    ]


def gc_metrics(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    if "gc" not in r:
        return []
    g, clear = r["gc"], r["gc"]["latency_ms_clear_of_gc"]
    return [("controller full GCs in window: count, max pause ms", "",
             f"{g['full_collections']}, {g['pause_ms']['max']:.0f}" if g["full_collections"] else "0, -"),
            ("p99 / max ms of beats not in flight during a full GC", "", f"{clear['p99']:.1f} / {clear['max']:.1f}")]


def heartbeat_table(runs: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """(header, rows): one column per agent count."""
    per_run = [heartbeat_metrics(r) for r in runs]
    rows = [[label, target, *(m[i][2] for m in per_run)] for i, (label, target, _) in enumerate(per_run[0])]
    return ["metric", "target", *(f"{r['agents']:,} agents" for r in runs)], rows


def schedule_table(s: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    rows = [
        ["queued jobs (in fan-outs) / hosts / running jobs", "",
         f"{s['jobs']:,} ({s['fanout_jobs']:,}) / {s['hosts']} / {s['running']}"],
        [f"plan() median ms ({s['passes']} passes)", f"< {TARGET_PLAN_MS:.0f}",
         f"{s['median_ms']:.1f} {mark(s['median_ms'], TARGET_PLAN_MS)}"],
        ["plan() min / max ms", "", f"{s['min_ms']:.1f} / {s['max_ms']:.1f}"],
        ["plan() CPU ms, median (wall minus CPU = waiting for a core)", "", f"{s['cpu_median_ms']:.1f}"],
        ["rest of the machine's cores during the passes (of 2)", "", f"{s['window']['other_cores']:.2f}"],
        ["decisions: start / wait", "", f"{s['started']:,} / {s['jobs'] - s['started']:,}"],
        ["waiting because", "", ", ".join(f"{k} {v:,}" for k, v in s["waiting"].items())],
    ]
    if e := s.get("engine"):
        later = e["later_ms"]
        rows += [
            [f"Engine.tick() with the store ({s['store']}), idle hosts: pass 1 ms (every job saved, explained)", "",
             f"{e['pass1_ms']:.1f}"],
            [f"Engine.tick() later passes ms, median of {ENGINE_PASSES - 1}", f"< {TARGET_PLAN_MS:.0f}",
             f"{later:.1f} {mark(later, TARGET_PLAN_MS)}"],
            ["the store's thread commits pass 1's writes, ms (off the event loop)", "", f"{e['drained_ms']:.1f}"],
        ]
    return ["metric", "target", "measured"], rows


def rich_table(title: str, header: list[str], rows: list[list[str]]) -> Table:
    t = Table(title=title, title_justify="left")
    for i, h in enumerate(header):
        t.add_column(h, justify="left" if i == 0 else "right")
    for r in rows:
        t.add_row(*r)
    return t


def md_table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                      *("| " + " | ".join(r) + " |" for r in rows)])


def profile_md(prof: list[dict[str, Any]]) -> str:
    return md_table(["function (one profiled pass)", "calls", "own ms", "cumulative ms"],
                    [[p["function"], f"{p['calls']:,}", f"{p['own_ms']:.1f}", f"{p['cum_ms']:.1f}"] for p in prof])


def markdown(doc: dict[str, Any]) -> str:
    m = doc["meta"]
    f = m["machine"]
    out = [f"# zcrepl scale benchmark, {f['date']}", "", f"Command: `{m['command']}`", "",
           f"{f['nproc']} CPUs ({f['cpu']}), {f['kernel']}, Python {f['python']}, commit {f['zcrepl_commit']} "
           f"(worktree {f['worktree_sha']}). The controller, the simulator and the poller share the machine.", ""]
    if doc["heartbeats"]:
        out += ["## Heartbeats", "", md_table(*heartbeat_table(doc["heartbeats"])), ""]
        out += [f"- {n}" for r in doc["heartbeats"] for n in r["notes"]]
    if doc["history"]:
        out += ["", "## Health history at steady state (in process)", "", md_table(*history_table(doc["history"]))]
    if doc["schedule"]:
        out += ["", "## Scheduling pass", "", md_table(*schedule_table(doc["schedule"])), ""]
        if doc["schedule"].get("profile"):
            out += [profile_md(doc["schedule"]["profile"]), ""]
    return "\n".join(out) + "\n"


def show(console: Console, doc: dict[str, Any]) -> None:
    if doc["heartbeats"]:
        console.print(rich_table("Heartbeat scale (one zc-controller)", *heartbeat_table(doc["heartbeats"])))
        for r in doc["heartbeats"]:
            for n in r["notes"]:
                console.print(f"[yellow]note:[/] {n}")
    if doc["history"]:
        console.print(rich_table("Health history at steady state (in process)", *history_table(doc["history"])))
    if doc["schedule"]:
        console.print(rich_table("Scheduling pass (plan(), in process)", *schedule_table(doc["schedule"])))
        if prof := doc["schedule"].get("profile"):
            console.print(rich_table("plan() profile, top own time", ["function", "calls", "own ms", "cum ms"],
                                     [[p["function"], f"{p['calls']:,}", f"{p['own_ms']:.1f}", f"{p['cum_ms']:.1f}"]
                                      for p in prof]))


def save(out: Path, doc: dict[str, Any]) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    stamp = "scale-" + time.strftime("%Y%m%d-%H%M%S")
    md, js = out / f"{stamp}.md", out / f"{stamp}.json"
    md.write_text(markdown(doc))
    js.write_text(json.dumps(doc, indent=1, default=str))
    return md, js
