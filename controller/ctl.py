"""``zc-ctl``: the operator's command line for zcrepl.

Exit codes: 0 success; 1 the job failed or was cancelled (or the controller refused the request in its
current state); 2 bad input (unknown host, bad path, unknown job, a number out of range); 3 the controller
cannot be reached; 4 the job is done but left entries out (special files, unreadable entries...: ``zc-ctl job
ID`` lists them); 5 the certificate's role does not allow it; 130 interrupted (the job keeps running).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from rich.console import Console
from rich.live import Live
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from zcrepl.controller import ctl_pki, render, render_sync
from zcrepl.controller.client import ControllerClient
from zcrepl.core.config import DEFAULT_CONTROLLER
from zcrepl.core.errors import PermissionDenied, Unavailable, UserError, ZcError
from zcrepl.core.paths import HOST_NAME_RULE, parse_endpoint, show, show_name, valid_host_name
from zcrepl.core.types import Durability, Endpoint, Job, JobOptions, JobState, Priority

EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_SKIPPED, EXIT_DENIED, EXIT_INTERRUPTED = (
    0, 1, 2, 3, 4, 5, 130)
# The controller's own ceilings (zcrepl.controller.validate), checked here first for a clearer message.
MAX_STREAMS, MAX_ATTEMPTS, MAX_BWLIMIT, MAX_HISTORY = 16, 100, 1 << 50, 900


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad input in one line and exits 2 (argparse's usage block is for --help)."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: {message}; run '{self.prog} --help' for the syntax\n")
        sys.exit(EXIT_USAGE)


def whole(lo: int, hi: int, what: str) -> Callable[[str], int]:
    """An argparse type: a whole number within lo..hi, or one sentence saying which numbers are."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = lo - 1
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what} (a whole number from {lo} to {hi})")
        return value

    return parse


def seconds(lo: float, hi: float, what: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not lo <= value <= hi:  # NaN fails too
            raise argparse.ArgumentTypeError(f"{text!r} is not {what} (seconds from {lo:g} to {hi:g}; 0: default)")
        return value

    return parse


def host(text: str) -> str:
    if not valid_host_name(text):
        raise argparse.ArgumentTypeError(f"'{show_name(text)}' is not an agent name: {HOST_NAME_RULE}")
    return text


def parse_rate(text: str) -> int:
    """``50M`` -> 50 MiB/s in bytes; plain numbers are bytes per second."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("B").removesuffix("/S")
    suffix = t[-1] if t and t[-1] in units else ""
    try:
        value = float(t[: len(t) - len(suffix)] if suffix else t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate like 50M (bytes per second)") from None
    if not 0 <= value * units[suffix] <= MAX_BWLIMIT:  # NaN and inf fail too
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate from 0 (unlimited) to 1048576G bytes per second")
    return int(value * units[suffix])


job_id = whole(1, (1 << 63) - 1, "a job id")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="zc-ctl", description="Operate a zcrepl cluster.")
    p.add_argument("--controller", metavar="HOST:PORT",
                   default=os.environ.get("ZC_CONTROLLER") or DEFAULT_CONTROLLER,
                   help=f"controller address (default: $ZC_CONTROLLER, then {DEFAULT_CONTROLLER})")
    ctl_pki.add_tls_options(p)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("replicate", help="make DST an exact copy of the tree SRC (like rsync -a SRC/ DST/)")
    r.add_argument("src", metavar="SRC", help="HOST:/path of the source tree")
    r.add_argument("dst", metavar="DST", nargs="+",
                   help="HOST:/path of the destination; several make a fan-out (finished copies feed the rest)")
    r.add_argument("--delete", action="store_true", help="remove what the source lacks from the destination")
    r.add_argument("--checksum", action="store_true", help="compare files by content hash, not size+mtime")
    r.add_argument("--xattrs", action="store_true", help="replicate extended attributes too (like rsync -X)")
    r.add_argument("--encrypt", action="store_true",
                   help="TLS 1.3 on the data connections, with the agents' certificates (mutual); the "
                        "controller's encrypt policy may also encrypt jobs without it")
    r.add_argument("--bwlimit", type=parse_rate, default=0, metavar="RATE",
                   help="cap the transfer at RATE bytes/s (suffix K, M, G)")
    r.add_argument("--max-attempts", type=whole(0, MAX_ATTEMPTS, "a number of attempts"), default=0, metavar="N",
                   help="attempts before the job fails")
    r.add_argument("--streams", type=whole(0, MAX_STREAMS, "a number of streams"), default=0, metavar="N",
                   help="parallel data connections (default: chosen from both hosts' cores)")
    r.add_argument("--durability", choices=[d.value for d in Durability], default=None,
                   help="job: one syncfs before done (default); file: fsync every file; none: leave it to "
                        "the kernel, like rsync (the default with --watch)")
    r.add_argument("--watch", action="store_true",
                   help="keep DST in step with SRC: a continuous rule (a full scan first, then every change "
                        "within ~0.1 s; it mirrors, so deletions follow); see zc-ctl syncs")
    r.add_argument("--window", type=seconds(0, 60, "a window"), default=0.0, metavar="SECONDS",
                   help="with --watch: how long changes are merged before shipping (default 0.05)")
    r.add_argument("--quiet", type=seconds(0, 600, "a quiet period"), default=0.0, metavar="SECONDS",
                   help="with --watch: how long a file still open for writing must see no write before it "
                        "ships (default 0.2; closing it ships it at once)")
    r.add_argument("--priority", choices=[p.name.lower() for p in reversed(Priority)],
                   default=Priority.NORMAL.name.lower(),
                   help="queue order (default normal); a waiting job gains a level every priority_aging "
                        "seconds, so low ones still run")
    r.add_argument("--detach", action="store_true", help="print the job id and return at once")
    r.add_argument("--json", action="store_true", help="print the final job as JSON")

    ag = sub.add_parser("agents", help="list registered agents, or remove an offline one")
    ag.add_argument("action", nargs="?", choices=["remove"],
                    help="remove: forget the offline agent NAME (refused while it is online or named by queued "
                         "jobs or watch rules)")
    ag.add_argument("name", nargs="?", type=host, metavar="NAME")
    ag.add_argument("--json", action="store_true")
    h = sub.add_parser("health", help="show host health of agents")
    h.add_argument("hosts", nargs="*", type=host, metavar="HOST", help="agent names (default: all)")
    h.add_argument("--watch", action="store_true", help="refresh every second until interrupted")
    h.add_argument("--history", type=whole(0, MAX_HISTORY, "a number of samples"), default=0, metavar="N",
                   help="with --json: also the last N samples per host (the controller keeps ~15 minutes)")
    h.add_argument("--json", action="store_true")
    j = sub.add_parser("jobs", help="list jobs, newest first")
    j.add_argument("--state", action="append", choices=[s.value for s in JobState], help="filter by state")
    j.add_argument("--limit", type=whole(0, 1_000_000, "a number of jobs"), default=50, help="0: all")
    j.add_argument("--json", action="store_true")
    one = sub.add_parser("job", help="show one job with its attempts")
    one.add_argument("id", type=job_id)
    one.add_argument("--json", action="store_true")
    x = sub.add_parser("explain", help="why a job waited, started, slowed, switched source or failed")
    x.add_argument("id", type=job_id)
    x.add_argument("--json", action="store_true")
    c = sub.add_parser("cancel", help="cancel a queued or running job")
    c.add_argument("id", type=job_id)
    c.add_argument("--json", action="store_true")
    sy = sub.add_parser("syncs", help="list watch rules (zc-ctl replicate --watch), or pause/resume/remove one")
    sy.add_argument("action", nargs="?", choices=["pause", "resume", "remove"], help="what to do with rule ID")
    sy.add_argument("id", nargs="?", type=whole(1, (1 << 63) - 1, "a rule id"), metavar="ID")
    sy.add_argument("--watch", action="store_true", help="refresh the table every second until interrupted")
    sy.add_argument("--json", action="store_true")
    ctl_pki.add_commands(sub)
    d = sub.add_parser("demo", help="start a local controller and two agents and replicate a generated tree")
    d.add_argument("--files", type=whole(0, 10_000_000, "a number of files"), default=2000,
                   help="number of small files in the demo tree")
    d.add_argument("--big-mib", type=whole(0, 1 << 20, "a size in MiB"), default=64, help="size of the one large file")
    d.add_argument("--keep", action="store_true", help="keep the demo directory")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Piped output keeps whole lines (grep-able); a terminal gets its own width.
    wide = None if sys.stdout.isatty() else 200
    out = Console(highlight=False, soft_wrap=True, width=wide)
    err = Console(stderr=True, highlight=False, soft_wrap=True, width=None if sys.stderr.isatty() else 200)
    if args.command == "demo":
        from zcrepl.controller.demo import run_demo

        return run_demo(files=args.files, big_mib=args.big_mib, keep=args.keep)
    trust = None
    try:
        if args.command == "pki":
            return ctl_pki.run_pki(args, out)
        trust = ctl_pki.client_trust(args)
        with ControllerClient(args.controller, trust) as client:
            return _dispatch(args, client, out, err)
    except PermissionDenied as e:
        err.print(f"zc-ctl: permission denied: {e}", markup=False)
        return EXIT_DENIED
    except Unavailable as e:
        why = ctl_pki.explain_failure(trust) if trust is not None else ""
        if why:
            err.print(f"zc-ctl: cannot use the TLS files for {args.controller}: {why}", markup=False)
            return EXIT_USAGE
        err.print(f"zc-ctl: {e}", markup=False)
        return EXIT_UNREACHABLE
    except UserError as e:
        err.print(f"zc-ctl: {e}", markup=False)
        return EXIT_USAGE
    except ZcError as e:
        err.print(f"zc-ctl: {e}", markup=False)
        return EXIT_JOB_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def show_ep(ep: Endpoint) -> str:
    return f"{ep.host}:{show(ep.path)}"


def _print_json(out: Console, doc: Any) -> None:
    out.out(json.dumps(doc, indent=2, sort_keys=True), highlight=False)


def _dispatch(args: argparse.Namespace, client: ControllerClient, out: Console, err: Console) -> int:
    if args.command == "replicate":
        return _replicate(args, client, out, err)
    if args.command == "agents":
        if args.action == "remove":
            if args.name is None:
                raise UserError("zc-ctl agents remove needs the NAME of an offline agent; zc-ctl agents lists them")
            removed = client.remove_agent(args.name)
            if args.json:
                _print_json(out, render.agent_doc(removed))
            else:
                out.print(f"agent {removed.info.name} removed (it was last seen {render.ago(removed.last_seen)})",
                          markup=False)
            return EXIT_OK
        agents = client.agents()
        if args.json:
            _print_json(out, [render.agent_doc(a) for a in agents])
        else:
            out.print(render.agents_table(agents))
        return EXIT_OK
    if args.command == "health":
        if args.watch and not args.json:
            return _watch_health(client, args.hosts, out)
        statuses = client.health(args.hosts, args.history)
        if args.json:
            _print_json(out, [render.agent_doc(a) for a in statuses])
        else:
            for s in statuses:
                out.print(render.health_table(s))
        return EXIT_OK
    if args.command == "jobs":
        jobs = client.jobs(tuple(JobState(s) for s in args.state or ()), args.limit)
        if args.json:
            _print_json(out, [render.job_doc(j) for j in jobs])
        else:
            out.print(render.jobs_table(jobs))
        return EXIT_OK
    if args.command == "job":
        job = client.job(args.id)
        _show_job(job, args.json, out)
        return EXIT_OK
    if args.command == "explain":
        history = client.explain(args.id)
        if args.json:
            _print_json(out, [{"at": at, "kind": kind, "reason": reason} for at, kind, reason in history])
        else:
            for at, kind, reason in history:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
                out.print(f"{stamp}  {kind:<7} {reason}", markup=False, highlight=False)
        return EXIT_OK
    if args.command == "syncs":
        return _syncs(args, client, out)
    if args.command in ("token", "cert"):
        return _certs(args, client, out)
    if args.command == "cancel":
        job = client.cancel(args.id)
        if args.json:
            _print_json(out, render.job_doc(job))
        else:
            out.print(f"job {job.id} cancelled", markup=False)
        return EXIT_OK
    raise AssertionError(args.command)


def _certs(args: argparse.Namespace, client: ControllerClient, out: Console) -> int:
    if args.command == "token":
        tok = client.create_token(args.agent, args.ttl)
        if args.json:
            _print_json(out, {"token": tok.token, "agent": tok.agent, "expires_at": tok.expires_at,
                              "ca_fingerprint": tok.ca_fingerprint})
        else:
            out.print(tok.token, markup=False)
            err = Console(stderr=True, highlight=False)
            err.print(f"one-time token for agent {tok.agent}, valid until {ctl_pki.when(tok.expires_at)}; on that "
                      f"host: zc-agent --name {tok.agent} --controller {args.controller} --join TOKEN ...",
                      markup=False)
        return EXIT_OK
    if args.cert_command == "revoke":
        listing = client.revoke(args.name, args.serial)
        out.print(f"revoked {args.name or args.serial}; {len(listing)} certificates are now revoked", markup=False)
    else:
        listing = client.revoked()
    for serial, name, at in listing:
        out.print(f"{ctl_pki.when(at)}  {name or '-':<20} {serial}", markup=False)
    return EXIT_OK


def _watch_health(client: ControllerClient, hosts: list[str], out: Console) -> int:
    """A live table of hosts, one row each, refreshed every second (Ctrl-C to stop)."""
    try:
        with Live(render.hosts_table(client.health(hosts)), console=out, refresh_per_second=2) as live:
            while True:
                time.sleep(1.0)
                live.update(render.hosts_table(client.health(hosts)))
    except KeyboardInterrupt:
        return EXIT_OK


def _show_job(job: Job, as_json: bool, out: Console) -> None:
    if as_json:
        _print_json(out, render.job_doc(job))
        return
    out.print(render.jobs_table([job]))
    asked = " (asked with --encrypt)" if job.options.encrypt else ""
    out.print(f"  data plane: {render.transport_text(render.job_transport(job))}{asked}", markup=False)
    for a in job.history:
        status = a.error or ("running" if not a.ended_at else "ok")
        over = f"; {render.transport_text(a.stats.transport)}" if a.stats.transport else ""
        out.print(f"  attempt {a.number}: {render.progress_text(a.stats)}{over}; {status}", markup=False)
    for line in render.skipped_lines(job):
        out.print(line, markup=False)


def _syncs(args: argparse.Namespace, client: ControllerClient, out: Console) -> int:
    if args.action:
        if args.id is None:
            raise UserError(f"zc-ctl syncs {args.action} needs a rule ID; zc-ctl syncs lists them")
        rule = client.sync_action(args.action, args.id)
        if args.json:
            _print_json(out, render_sync.sync_doc(rule))
        else:
            done = {"pause": "paused", "resume": "resumed (it reconciles first)", "remove": "removed"}[args.action]
            out.print(f"watch rule {rule.id} {done}", markup=False)
        return EXIT_OK
    if args.watch and not args.json:
        try:
            with Live(render_sync.syncs_table(client.syncs()), console=out, refresh_per_second=2) as live:
                while True:
                    time.sleep(1.0)
                    live.update(render_sync.syncs_table(client.syncs()))
        except KeyboardInterrupt:
            return EXIT_OK
    rules = client.syncs()
    if args.json:
        _print_json(out, [render_sync.sync_doc(r) for r in rules])
    else:
        out.print(render_sync.syncs_table(rules))
    return EXIT_OK


def _create_sync(args: argparse.Namespace, client: ControllerClient, options: JobOptions, out: Console,
                 err: Console) -> int:
    src, dsts = parse_endpoint(args.src), [parse_endpoint(d) for d in args.dst]
    rule = client.create_sync(src, dsts, options, args.window, args.quiet)
    if not args.detach:
        # Follow the first reconciliation, so a bad path or an unreachable host shows here and now.
        with err.status(f"watch rule {rule.id}: starting") as status:
            while True:
                rule = next((r for r in client.syncs() if r.id == rule.id), rule)
                status.update(f"watch rule {rule.id}: {rule.status}")
                first_scan = rule.counters.reconciles > 0 and not rule.status.startswith("reconciling")
                if rule.status.startswith(("failed", "waiting", "held")) or (
                        rule.status.startswith("watching") and first_scan):
                    break
                time.sleep(0.2)
    if args.json:
        _print_json(out, render_sync.sync_doc(rule))
    elif rule.status.startswith("failed"):
        err.print(f"zc-ctl: watch rule {rule.id} {rule.status}; fix it and run zc-ctl syncs resume {rule.id} "
                  f"(or zc-ctl syncs remove {rule.id})", markup=False)
        return EXIT_JOB_FAILED
    else:
        c = rule.counters
        out.print(f"watch rule {rule.id} {rule.status or 'created'}: {show_ep(src)} -> "
                  f"{', '.join(show_ep(d) for d in dsts)}; first scan moved {c.files} files "
                  f"({render.human_bytes(c.bytes)}); zc-ctl syncs shows its lag", markup=False)
    return EXIT_OK


def _replicate(args: argparse.Namespace, client: ControllerClient, out: Console, err: Console) -> int:
    src, dsts = parse_endpoint(args.src), [parse_endpoint(d) for d in args.dst]
    durability = args.durability or (Durability.NONE.value if args.watch else Durability.JOB.value)
    options = JobOptions(delete=args.delete, checksum=args.checksum, bwlimit=args.bwlimit,
                         max_attempts=args.max_attempts, streams=args.streams,
                         durability=Durability(durability), xattrs=args.xattrs,
                         priority=Priority[args.priority.upper()], encrypt=args.encrypt)
    if args.watch:
        return _create_sync(args, client, options, out, err)
    jobs = client.submit_fanout(src, dsts, options) if len(dsts) > 1 else [client.submit(src, dsts[0], options)]
    ids = ", ".join(str(j.id) for j in jobs)
    if args.detach:
        if args.json:
            _print_json(out, render.job_doc(jobs[0]) if len(jobs) == 1 else [render.job_doc(j) for j in jobs])
        else:
            out.print(f"job {ids} queued; follow with: zc-ctl job {jobs[0].id}", markup=False)
        return EXIT_OK
    try:
        jobs = [_follow(client, jobs[0], err)] if len(jobs) == 1 else _follow_group(client, jobs, err)
    except KeyboardInterrupt:
        err.print(f"zc-ctl: stopped watching; job {ids} keeps running "
                  f"(zc-ctl job {jobs[0].id} to follow, zc-ctl cancel {jobs[0].id} to stop it)", markup=False)
        return EXIT_INTERRUPTED
    if args.json:
        _print_json(out, render.job_doc(jobs[0]) if len(jobs) == 1 else [render.job_doc(j) for j in jobs])
    failed = [j for j in jobs if j.state is not JobState.DONE]
    for j in jobs:
        if j.state is JobState.DONE and not args.json:
            out.print(render.job_summary(j), markup=False)
    for j in failed:
        err.print(f"zc-ctl: job {j.id} ({j.destination.host}) {j.state.value}: {j.error}", markup=False)
    skipped = [j for j in jobs if j.done_with_skips]
    for j in skipped:
        first = f" (first: {show(j.skipped[0].path)}: {j.skipped[0].reason})" if j.skipped else ""
        err.print(f"zc-ctl: job {j.id} ({j.destination.host}) done with {j.progress.entries_skipped} entries "
                  f"skipped{first}; zc-ctl job {j.id} lists them", markup=False)
    return EXIT_JOB_FAILED if failed else EXIT_SKIPPED if skipped else EXIT_OK


def _follow_group(client: ControllerClient, jobs: list[Job], err: Console) -> list[Job]:
    """One progress line per destination of a fan-out, until every job is final."""
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[files]}"), DownloadColumn(),
        TransferSpeedColumn(), console=err, transient=True,
    )
    with progress:
        tasks = {j.id: progress.add_task(f"job {j.id} -> {j.destination.host}", total=None, files="") for j in jobs}
        while True:
            jobs = client.jobs(group_id=jobs[0].group_id)
            for j in jobs:
                p = j.progress
                state = j.wait_reason if j.state is JobState.QUEUED and j.wait_reason else j.state.value
                progress.update(tasks[j.id], description=f"job {j.id} -> {j.destination.host} {state}",
                                completed=p.bytes_done, total=p.bytes_total if p.scan_done and p.bytes_total else None,
                                files=render.progress_text(p))
            if all(j.state.final for j in jobs):
                return sorted(jobs, key=lambda j: j.id)
            time.sleep(0.3)


def _follow(client: ControllerClient, job: Job, err: Console) -> Job:
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[files]}"), DownloadColumn(),
        TransferSpeedColumn(), TimeRemainingColumn(), console=err, transient=True,
    )
    with progress:
        task = progress.add_task(f"job {job.id}", total=None, files="")
        for snap in client.watch(job.id):
            job, p = snap, snap.progress
            if job.state is JobState.QUEUED:
                desc = f"job {job.id} {job.wait_reason or 'queued'}"
            else:
                desc = f"job {job.id} {job.state.value}"
            progress.update(task, description=desc, completed=p.bytes_done,
                            total=p.bytes_total if p.scan_done and p.bytes_total else None,
                            files=render.progress_text(p))
    return job


if __name__ == "__main__":
    sys.exit(main())
