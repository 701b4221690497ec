"""How zc-ctl shows things: stable JSON documents for scripts, rich tables for people."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from zcrepl.cli.render_plan import item_doc
from zcrepl.core.paths import show
from zcrepl.core.types import AgentStatus, HostHealth, Job, TransferStats
from zcrepl.core.units import rate, size

if TYPE_CHECKING:  # each table function imports it: JSON output and plain lines never load rich
    from rich.table import Table


def ago(ts: float, now: float | None = None) -> str:
    if not ts:
        return "never"
    d = max(0.0, (now or time.time()) - ts)
    if d < 60:
        return f"{d:.0f}s ago"
    if d < 3600:
        return f"{d / 60:.0f}m ago"
    if d < 86400:
        return f"{d / 3600:.1f}h ago"
    return f"{d / 86400:.1f}d ago"


# -- JSON -------------------------------------------------------------------------------------------
def health_doc(h: HostHealth | None) -> dict[str, Any] | None:
    if h is None:
        return None
    d = asdict(h)
    d["cpu_per_core"] = list(h.cpu_per_core)
    d["exports"] = [{**asdict(e), "path": show(e.path)} for e in h.exports]
    d["disks"] = [asdict(x) for x in h.disks]
    d["nics"] = [asdict(x) for x in h.nics]
    return d


def agent_doc(s: AgentStatus) -> dict[str, Any]:
    return {
        "name": s.info.name, "online": s.online, "grpc_address": s.info.grpc_address,
        "data_address": s.info.data_address, "exports": [show(e) for e in s.info.exports],
        "version": s.info.version, "pid": s.info.pid, "hostname": s.info.hostname, "last_seen": s.last_seen,
        "connected_at": s.connected_at, "running_jobs": s.running_jobs, "health": health_doc(s.health),
        "history": [health_doc(h) for h in s.history],
    }


def stats_doc(s: TransferStats) -> dict[str, Any]:
    return asdict(s)


def job_doc(j: Job) -> dict[str, Any]:
    return {
        "id": j.id, "state": j.state.value,
        "source": str(j.source), "source_host": j.source.host,
        "source_path": show(j.source.path),
        "destination": str(j.destination),
        "destination_host": j.destination.host, "destination_path": show(j.destination.path),
        "options": {**asdict(j.options), "durability": j.options.durability.value,
                    "priority": j.options.priority.name.lower(), "backup_dir": show(j.options.backup_dir),
                    "link_dest": [show(d) for d in j.options.link_dest],
                    "compress": j.options.compress.name.lower()},
        "created_at": j.created_at, "updated_at": j.updated_at,
        "started_at": j.started_at, "finished_at": j.finished_at, "attempts": j.attempts,
        "max_attempts": j.max_attempts, "error": j.error, "wait_reason": j.wait_reason,
        "next_attempt_at": j.next_attempt_at, "progress": stats_doc(j.progress),
        "group_id": j.group_id, "schedule_id": j.schedule_id, "done_with_skips": j.done_with_skips,
        "done_with_errors": j.done_with_errors,
        "transport": job_transport(j),
        "skipped": [{"path": show(x.path), "reason": x.reason} for x in j.skipped if not x.error],
        "errors": [{"path": show(x.path), "reason": x.reason} for x in j.skipped if x.error],
        "plan": [item_doc(x) for x in j.plan],
        "history": [{"number": a.number, "started_at": a.started_at, "ended_at": a.ended_at,
                     "error": a.error, "source": show(a.source), "transport": a.stats.transport,
                     "stats": stats_doc(a.stats)} for a in j.history],
    }


_TRANSPORT = {"none": "plaintext", "tls": "TLS 1.3 (OpenSSL writes)", "ktls": "TLS 1.3 (kernel TLS, sendfile)"}


def job_transport(j: Job) -> str:
    """How the latest attempt's bytes travelled: "none", "tls", "ktls", or "" before any was reported."""
    for stats in (j.progress, *(a.stats for a in reversed(j.history))):
        if stats.transport:
            return stats.transport
    return ""


def transport_text(transport: str) -> str:
    return _TRANSPORT.get(transport, transport or "-")


# -- tables -----------------------------------------------------------------------------------------
AGENT_COLUMNS = ("NAME", "STATE", "DATA", "EXPORTS", "CPU", "LOAD/CORE", "MEM AVAIL", "JOBS", "SEEN")


def agents_rows(agents: list[AgentStatus]) -> list[list[str]]:
    """The cells of ``agents_table``, as plain text (STATE is "online" or "offline")."""
    now = time.time()
    rows = []
    for s in agents:
        h = s.health
        rows.append([
            s.info.name, "online" if s.online else "offline", s.info.data_address,
            ", ".join(show(e) for e in s.info.exports),
            f"{h.cpu_percent:.0f}%" if h else "-",
            f"{h.load1 / max(1, h.cpu_count):.2f}" if h else "-",
            size(h.mem_available) if h else "-", str(s.running_jobs), ago(s.last_seen, now),
        ])
    return rows


def agents_table(agents: list[AgentStatus]) -> Table:
    from rich.table import Table

    t = Table(title="agents", title_justify="left")
    for col in AGENT_COLUMNS:
        t.add_column(col, no_wrap=col != "EXPORTS")
    for row in agents_rows(agents):
        row[1] = "[green]online[/]" if row[1] == "online" else "[red]offline[/]"
        t.add_row(*row)
    return t


def hosts_table(agents: list[AgentStatus]) -> Table:
    """One row per host: the figures the scheduler looks at."""
    from rich.table import Table

    t = Table(title=f"health at {time.strftime('%H:%M:%S')}", title_justify="left")
    for col in ("HOST", "STATE", "CPU", "LOAD/CORE", "MEM AVAIL", "DISK R/W", "BUSIEST DISK", "NET RX/TX",
                "TRANSFERS", "WATCHES FREE", "SEEN"):
        t.add_column(col, no_wrap=True)
    now = time.time()
    for s in agents:
        h = s.health
        if h is None:
            t.add_row(s.info.name, "online" if s.online else "offline", *["-"] * 8, ago(s.last_seen, now))
            continue
        disk = max(h.disks, key=lambda d: d.busy_percent, default=None)
        t.add_row(
            s.info.name, "[green]online[/]" if s.online else "[red]offline[/]", f"{h.cpu_percent:.0f}%",
            f"{h.load1 / max(1, h.cpu_count):.2f}", size(h.mem_available),
            f"{rate(h.disk_read_bps)} / {rate(h.disk_write_bps)}",
            f"{disk.device} {disk.busy_percent:.0f}%" if disk else "-",
            f"{rate(h.net_recv_bps)} / {rate(h.net_sent_bps)}",
            f"{h.active_transfers} ({rate(h.transfer_bps)})" if h.active_transfers else "0",
            inotify_headroom(h), ago(s.last_seen, now),
        )
    return t


def health_table(s: AgentStatus) -> Table:
    from rich.table import Table

    h = s.health
    t = Table(title=f"{s.info.name} ({'online' if s.online else 'offline'}, seen {ago(s.last_seen)})",
              title_justify="left", show_header=False)
    t.add_column("metric", style="bold")
    t.add_column("value")
    if h is None:
        t.add_row("health", "no sample yet")
        return t
    t.add_row("cpu", f"{h.cpu_percent:.1f}% of {h.cpu_count} cores ("
              + " ".join(f"{c:.0f}" for c in h.cpu_per_core) + ")")
    t.add_row("load 1/5/15", f"{h.load1:.2f} {h.load5:.2f} {h.load15:.2f}")
    t.add_row("memory", f"{size(h.mem_available)} available of {size(h.mem_total)}")
    t.add_row("swap in/out", f"{rate(h.swap_in_bps)} / {rate(h.swap_out_bps)}")
    for e in h.exports:
        t.add_row(f"export {show(e.path)}", f"{e.percent:.1f}% used, {size(e.free)} free "
                  f"of {size(e.total)}, on {e.device or 'an unknown device'}")
    t.add_row("disk read/write", f"{rate(h.disk_read_bps)} / {rate(h.disk_write_bps)}")
    for d in h.disks:
        t.add_row(f"  {d.device}", f"{rate(d.read_bps)} / {rate(d.write_bps)}, "
                  f"{d.busy_percent:.0f}% busy")
    t.add_row("net recv/sent", f"{rate(h.net_recv_bps)} / {rate(h.net_sent_bps)}"
              + (f", data port on {h.data_nic}" if h.data_nic else ""))
    t.add_row("agent", f"{h.agent_cpu_percent:.1f}% cpu, {size(h.agent_rss)} rss, {h.open_fds} fds")
    t.add_row("transfers", f"{h.active_transfers} active, {rate(h.transfer_bps)}")
    used = f" ({h.inotify_watches_used:,} of {h.inotify_watches_max:,} in use by this user)"
    t.add_row("inotify watches", f"{inotify_headroom(h)} free" + (used if h.inotify_watches_max else ""))
    return t


def inotify_headroom(h: HostHealth) -> str:
    """Watches the agent's user may still add (the kernel limit is per user), or "-" when unknown."""
    return f"{h.inotify_watches_max - h.inotify_watches_used:,}" if h.inotify_watches_max else "-"


def progress_text(p: TransferStats) -> str:
    total = str(p.files_total) + ("" if p.scan_done else "+")
    return f"{p.files_done}/{total} files, {size(p.bytes_done)}"


def wire_text(p: TransferStats) -> str:
    """What crossed the network against the file bytes moved (compression shows here), or "" before any."""
    if not p.wire_bytes or not p.bytes_done:
        return ""
    return f"{size(p.wire_bytes)} on the wire for {size(p.bytes_done)} of files"


def jobs_table(jobs: list[Job]) -> Table:
    from rich.table import Table

    t = Table(title="jobs", title_justify="left")
    for col in ("ID", "STATE", "PRIO", "SOURCE", "DESTINATION", "PROGRESS", "TRIES", "INFO", "CREATED"):
        if col == "INFO":  # the full error is in 'zc-ctl job ID'
            t.add_column(col, overflow="ellipsis", no_wrap=True, max_width=70)
        else:
            t.add_column(col, no_wrap=col not in ("SOURCE", "DESTINATION"), min_width=8)
    colors = {"done": "green", "failed": "red", "running": "cyan", "queued": "yellow", "cancelled": "magenta"}
    now = time.time()
    for j in jobs:
        info = j.error if j.state.value in ("failed", "cancelled") else j.wait_reason
        state = f"[{colors[j.state.value]}]{j.state.value}[/]"
        if j.done_with_errors:
            state = f"[red]{done_state(j)}[/]"
            info = f"zc-ctl job {j.id} lists the files not copied"
        elif j.done_with_skips:
            state = f"[yellow]{done_state(j)}[/]"
            info = f"zc-ctl job {j.id} lists the entries left out"
        t.add_row(str(j.id), state, j.options.priority.name.lower(),
                  str(j.source), str(j.destination),
                  progress_text(j.progress), f"{j.attempts}/{j.max_attempts}", info, ago(j.created_at, now))
    return t


def job_summary(j: Job) -> str:
    p = j.progress
    secs = (j.finished_at - j.started_at) if j.finished_at and j.started_at else 0.0
    speed = f", {rate(p.bytes_done / secs)}" if secs > 0 and p.bytes_done else ""
    state = done_state(j) if j.done_with_skips or j.done_with_errors else j.state.value
    over = f" over {transport_text(p.transport)}" if p.transport in ("tls", "ktls") else ""
    return (f"job {j.id} {state}: {p.files_done} files ({size(p.bytes_done)}) copied{over}, "
            f"{p.files_skipped} up to date, {p.deleted} deleted, {p.entries} entries scanned "
            f"in {secs:.2f}s{speed}")


def snapshot_summary(j: Job) -> str:
    """The last line of zc-ctl snapshot: where the snapshot is, what it shares with the one before, what went."""
    p = j.progress
    return (f"snapshot {j.destination}/{j.options.snapshot_name} complete: {p.linked} files hard-linked from the "
            f"previous snapshot, {p.pruned} old snapshot{'s' if p.pruned != 1 else ''} pruned")


def done_state(j: Job) -> str:
    """"done with 2 errors, 3 skipped", "done with 1 error", "done with 3 skipped" or "done"."""
    p = j.progress
    parts = ([f"{p.file_errors} error{'s' if p.file_errors != 1 else ''}"] if p.file_errors else []) + (
        [f"{p.entries_skipped} skipped"] if p.entries_skipped else [])
    return f"done with {', '.join(parts)}" if parts else "done"


def skipped_lines(j: Job) -> list[str]:
    """The files a job could not copy, then the entries it left out: one line each (path and reason), then how
    many more there were."""
    lines: list[str] = []
    for error, total in ((True, j.progress.file_errors), (False, j.progress.entries_skipped)):
        if not total:
            continue
        listed = [x for x in j.skipped if x.error is error]
        lines.append(f"{total} file{'s' if total != 1 else ''} could not be read (not replicated):" if error
                     else f"{total} entries skipped (not replicated):")
        lines += [f"  {show(x.path)}: {x.reason}" for x in listed]
        if total > len(listed):
            lines.append(f"  ... and {total - len(listed)} more (the source agent's log names every one)")
    return lines
