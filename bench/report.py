"""Turns runs into the results table: medians and ranges per workload and tool, ratios to the rsync daemon
and to the raw limit, CPU per GiB, bytes on the wire, agents' peak RSS. Printed with rich and saved as
Markdown + JSON under bench/results/.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from measure import Run
from rich.console import Console
from rich.table import Table

GiB = 1 << 30


@dataclass
class Row:
    workload: str
    tool: str
    n: int
    failed: int
    median: float | None
    lo: float | None
    hi: float | None
    gbps: float | None = None
    entries_per_s: float | None = None
    x_rsyncd: float | None = None  # wall time / rsync-daemon wall time (lower is better)
    x_raw: float | None = None  # rate / raw sendfile rate (higher is better)
    cpu_send: float | None = None
    cpu_recv: float | None = None
    cpu_send_gib: float | None = None
    cpu_recv_gib: float | None = None
    local: bool = False
    wire_bytes: int | None = None
    other_cpu: float | None = None  # machine busy CPU during the run minus the tool's: writeback, other processes
    rss_a: int | None = None
    rss_b: int | None = None


def _med(xs: list[float | int | None]) -> Any:
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else None


def build_rows(runs: list[Run], workloads: dict[str, dict[str, Any]], labels: dict[str, tuple[str, bool]],
               rss: dict[str, dict[str, int]]) -> list[Row]:
    """``workloads``: name -> {"mode", "bytes", "entries", "files"}; ``labels``: tool key -> (label, local),
    in display order; ``rss``: workload -> {"hostA": bytes, "hostB": bytes}."""
    rows: list[Row] = []
    for wname, w in workloads.items():
        wrows: list[Row] = []
        for key, (label, local) in labels.items():
            timed = [r for r in runs if r.workload == wname and r.tool == key and r.round >= 0]
            if not timed:
                continue
            ok = [r for r in timed if r.ok]
            views = [(label, [r.wall for r in ok])]
            if key.startswith("zc-"):  # the same runs seen by the operator and by the controller
                views = [(f"{label} (zc-ctl)", [r.wall for r in ok]),
                         (f"{label} (controller)", [r.job_seconds for r in ok if r.job_seconds is not None])]
            for name, times in views:
                row = Row(wname, name, len(times), len(timed) - len(ok), _med(times),
                          min(times) if times else None, max(times) if times else None, local=local)
                row.cpu_send, row.cpu_recv = _med([r.cpu_send for r in ok]), _med([r.cpu_recv for r in ok])
                gib = w["bytes"] / GiB
                if gib >= 0.01:
                    row.cpu_send_gib = row.cpu_send / gib if row.cpu_send is not None else None
                    row.cpu_recv_gib = row.cpu_recv / gib if row.cpu_recv is not None else None
                row.wire_bytes = _med([r.wire_bytes for r in ok])
                row.other_cpu = _med([_other(r) for r in ok])
                if key.startswith("zc-") and wname in rss:
                    row.rss_a, row.rss_b = rss[wname].get("hostA"), rss[wname].get("hostB")
                if row.median:
                    if w["mode"] == "fresh":
                        row.gbps = w["bytes"] / row.median / 1e9
                    if w["files"] > 1:
                        row.entries_per_s = w["entries"] / row.median
                wrows.append(row)
        ref = next((r.median for r in wrows if r.tool == labels.get("rsyncd", ("",))[0]), None)
        raw = next((r.median for r in wrows if r.tool == labels.get("raw", ("",))[0]), None)
        for r in wrows:
            if r.median and ref:
                r.x_rsyncd = r.median / ref
            if r.median and raw:
                r.x_raw = raw / r.median
        rows += wrows
    return rows


def _other(r: Run) -> float | None:
    busy = r.extra.get("machine_busy")
    if busy is None:
        return None
    ours = (r.cpu_send, r.cpu_recv, r.cpu_client, r.extra.get("cpu_controller"))
    return busy - sum(x for x in ours if x is not None)


# -- formatting -------------------------------------------------------------------------------------
COLUMNS = ["W", "tool", "n", "wall s median (min-max)", "GB/s", "entries/s", "x rsyncd time", "x raw rate",
           "CPU s send / recv", "CPU s/GiB send / recv", "other CPU s", "wire bytes", "agent peak RSS MiB A / B"]


def _f(x: float | None, fmt: str = "{:.3g}") -> str:
    return "-" if x is None else fmt.format(x)


def _secs(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3f}" if x < 1 else f"{x:.2f}" if x < 100 else f"{x:.0f}"


def cells(r: Row) -> list[str]:
    wall = "-" if r.median is None else f"{_secs(r.median)} ({_secs(r.lo)}-{_secs(r.hi)})"
    if r.failed:
        wall += f" [{r.failed} failed]"
    if r.local:
        cpu = f"{_f(r.cpu_send, '{:.2f}')} total"
        cpu_gib = f"{_f(r.cpu_send_gib, '{:.2f}')} total"
    else:
        cpu = f"{_f(r.cpu_send, '{:.2f}')} / {_f(r.cpu_recv, '{:.2f}')}"
        cpu_gib = f"{_f(r.cpu_send_gib, '{:.2f}')} / {_f(r.cpu_recv_gib, '{:.2f}')}"
    rss = "-" if r.rss_a is None else f"{r.rss_a / (1 << 20):.0f} / {(r.rss_b or 0) / (1 << 20):.0f}"
    return [r.workload, r.tool, str(r.n), wall, _f(r.gbps, "{:.3f}"), _f(r.entries_per_s, "{:,.0f}"),
            _f(r.x_rsyncd, "{:.2f}"), _f(r.x_raw, "{:.2f}"), cpu, cpu_gib, _f(r.other_cpu, "{:.2f}"),
            "-" if r.wire_bytes is None else f"{int(r.wire_bytes):,}", rss]


def markdown_table(rows: list[Row]) -> str:
    out = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    out += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    return "\n".join(out)


def rich_table(rows: list[Row], title: str) -> Table:
    t = Table(title=title, title_justify="left")
    for c in COLUMNS:
        t.add_column(c, justify="left" if c in ("W", "tool") else "right")
    for i, r in enumerate(rows):
        t.add_row(*cells(r), end_section=i + 1 < len(rows) and rows[i + 1].workload != r.workload)
    return t


def markdown(meta: dict[str, Any], workloads: dict[str, dict[str, Any]], rows: list[Row]) -> str:
    facts = meta["machine"]
    lines = [
        f"# zcrepl benchmark, {facts['date']}", "",
        f"Command: `{meta['command']}`", "",
        f"{meta['rounds']} timed round(s) per workload, interleaved tool by tool, "
        f"{'after one discarded warm-up round' if meta['warmup'] else 'no warm-up round'}; "
        f"data in `{meta['data']}`{'; QUICK mode (small sizes)' if meta['quick'] else ''}"
        f"{'; zc-ctl --streams ' + str(meta['streams']) if meta['streams'] else ''}"
        f"{'; sync(2) before every run (untimed)' if meta.get('sync') else '; no sync between runs'}.",
        "",
        "| machine | |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in facts.items()], "",
        "| workload | what | mode | entries | files | bytes |", "|---|---|---|---|---|---|",
        *[f"| {n} | {w['title']} | {w['mode']} | {w['entries']:,} | {w['files']:,} | {w['bytes']:,} |"
          for n, w in workloads.items()], "",
        markdown_table(rows), "",
        "Wall: median (min-max) of the timed rounds. `zcrepl X (zc-ctl)` is the zc-ctl process as the operator "
        "sees it (includes Python start-up and the gRPC round trips); `(controller)` is the attempt's "
        "ended_at - started_at from the job history. x rsyncd time = median / rsync-daemon median (lower is "
        "better); x raw rate = raw sendfile median / median (higher is better). CPU is user+sys: zcrepl "
        "send/recv = source/destination agent (/proc/PID/stat deltas, all threads); rsync daemon send = "
        "client rusage, recv = the daemon's reaped children; raw send = sender thread, recv = receiver "
        "process; local tools show one total. Wire bytes: zcrepl job progress.wire_bytes, rsync --stats "
        "sent+received (a pipe for rsync local). Other CPU: the machine's busy CPU during the run minus the "
        "tool's own (kernel writeback, softirq work charged elsewhere, other processes: a noise indicator). "
        "Peak RSS is each agent's VmHWM, agents restarted per workload.",
    ]
    if meta.get("notes"):
        lines += ["", "Notes:", *[f"- {n}" for n in meta["notes"]]]
    return "\n".join(lines) + "\n"


def save(out_dir: Path, meta: dict[str, Any], workloads: dict[str, dict[str, Any]], rows: list[Row],
         runs: list[Run], rss: dict[str, Any]) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S") + ("-quick" if meta["quick"] else "")
    md, js = out_dir / f"{stamp}.md", out_dir / f"{stamp}.json"
    md.write_text(markdown(meta, workloads, rows))
    js.write_text(json.dumps({"meta": meta, "workloads": workloads, "rows": [asdict(r) for r in rows],
                              "peak_rss": rss, "runs": [asdict(r) for r in runs]}, indent=1))
    return md, js


def show(console: Console, rows: list[Row], title: str) -> None:
    console.print(rich_table(rows, title))


def rerender(path: Path) -> Path:
    """Rebuild the Markdown of a saved JSON result (after a change to the table code)."""
    doc = json.loads(path.read_text())
    meta = doc["meta"]
    runs = [Run(**r) for r in doc["runs"]]
    labels = {k: (v[0], v[1]) for k, v in meta["labels"].items()}
    rows = build_rows(runs, doc["workloads"], labels, doc["peak_rss"])
    md = path.with_suffix(".md")
    md.write_text(markdown(meta, doc["workloads"], rows))
    return md


if __name__ == "__main__":
    import sys

    for arg in sys.argv[1:]:
        print(rerender(Path(arg)))
