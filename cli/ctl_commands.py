"""The zc-ctl commands that talk to the controller (everything but ``pki`` and ``demo``), imported by
``ctl.main`` only once the arguments parsed: ``--help`` and a usage error never load gRPC.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

from zcrepl.cli import ctl_pki, render, render_plan
from zcrepl.cli.client import ControllerClient
from zcrepl.cli.ctl_out import (
    EXIT_FILE_ERRORS,
    EXIT_INTERRUPTED,
    EXIT_JOB_FAILED,
    EXIT_OK,
    EXIT_SKIPPED,
    Out,
)
from zcrepl.cli.render_plain import plain_table
from zcrepl.core.errors import UserError
from zcrepl.core.paths import parse_endpoint, show
from zcrepl.core.trust import Trust
from zcrepl.core.types import Compress, Durability, Endpoint, Job, JobOptions, JobState, Priority
from zcrepl.core.units import size

MAX_RULES_FILE = 1 << 20  # bytes of an --exclude-from/--include-from file

if TYPE_CHECKING:
    import grpc
    from rich.progress import Progress, TaskID


def run(args: argparse.Namespace, trust: Trust | None, out: Out, err: Out, dialled: grpc.Channel | None = None
        ) -> int:
    """Run the command against ``args.controller``; ``dialled``: a channel to its first controller that
    ``ctl.main`` opened already (``dial.connect_early``)."""
    with ControllerClient(args.controller, trust, dialled=dialled) as client:
        return _dispatch(args, client, out, err)


def _dispatch(args: argparse.Namespace, client: ControllerClient, out: Out, err: Out) -> int:
    return _COMMANDS[args.command](args, client, out, err)


def _agents(args: argparse.Namespace, client: ControllerClient, out: Out, err: Out) -> int:
    if args.action == "remove":
        if args.name is None:
            raise UserError("zc-ctl agents remove needs the NAME of an offline agent; zc-ctl agents lists them")
        removed = client.remove_agent(args.name)
        if args.json:
            out.json(render.agent_doc(removed))
        else:
            out.line(f"agent {removed.info.name} removed (it was last seen {render.ago(removed.last_seen)})")
        return EXIT_OK
    agents = client.agents()
    if args.json:
        out.json([render.agent_doc(a) for a in agents])
        return EXIT_OK
    # Piped, a plain table is what rich would print, without loading it; else (or when it cannot) rich.
    text = None if out.terminal else plain_table("agents", render.AGENT_COLUMNS, render.agents_rows(agents),
                                                 out.width)
    if text is None:
        out.show(render.agents_table(agents))
    else:
        out.write(text)
    return EXIT_OK


def _health(args: argparse.Namespace, client: ControllerClient, out: Out, err: Out) -> int:
    if args.watch and not args.json:
        return _watch_health(client, args.hosts, out)
    statuses = client.health(args.hosts, args.history)
    if args.json:
        out.json([render.agent_doc(a) for a in statuses])
    else:
        for s in statuses:
            out.show(render.health_table(s))
    return EXIT_OK


def _jobs(args: argparse.Namespace, client: ControllerClient, out: Out, err: Out) -> int:
    jobs = client.jobs(tuple(JobState(s) for s in args.state or ()), args.limit)
    if args.json:
        out.json([render.job_doc(j) for j in jobs])
    else:
        out.show(render.jobs_table(jobs))
    return EXIT_OK


def _job(args: argparse.Namespace, client: ControllerClient, out: Out, err: Out) -> int:
    _show_job(client.job(args.id), args.json, out)
    return EXIT_OK


def _explain(args: argparse.Namespace, client: ControllerClient, out: Out, err: Out) -> int:
    history = client.explain(args.id)
    if args.json:
        out.json([{"at": at, "kind": kind, "reason": reason} for at, kind, reason in history])
    else:
        for at, kind, reason in history:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
            out.line(f"{stamp}  {kind:<7} {reason}")
    return EXIT_OK


def _schedules(args: argparse.Namespace, client: ControllerClient, out: Out, err: Out) -> int:
    from zcrepl.cli import ctl_schedule

    return ctl_schedule.run(args, client, out)


def _snapshots(args: argparse.Namespace, client: ControllerClient, out: Out, err: Out) -> int:
    from zcrepl.cli import ctl_snapshots

    return ctl_snapshots.run(args, client, out, err)


def _cancel(args: argparse.Namespace, client: ControllerClient, out: Out, err: Out) -> int:
    job = client.cancel(args.id)
    if args.json:
        out.json(render.job_doc(job))
    else:
        out.line(f"job {job.id} cancelled")
    return EXIT_OK


def _certs(args: argparse.Namespace, client: ControllerClient, out: Out) -> int:
    if args.command == "token":
        tok = client.create_token(args.agent, args.ttl)
        if args.json:
            out.json({"token": tok.token, "agent": tok.agent, "expires_at": tok.expires_at,
                      "ca_fingerprint": tok.ca_fingerprint})
        else:
            out.line(tok.token)
            from rich.console import Console  # this note has always wrapped at the terminal's width

            Console(stderr=True, highlight=False).print(
                f"one-time token for agent {tok.agent}, valid until {ctl_pki.when(tok.expires_at)}; on that "
                f"host: zc-agent --name {tok.agent} --controller {args.controller} --join TOKEN ...", markup=False)
        return EXIT_OK
    if args.cert_command == "revoke":
        listing = client.revoke(args.name, args.serial)
        out.line(f"revoked {args.name or args.serial}; {len(listing)} certificates are now revoked")
    else:
        listing = client.revoked()
    for serial, name, at in listing:
        out.line(f"{ctl_pki.when(at)}  {name or '-':<20} {serial}")
    return EXIT_OK


def _watch_health(client: ControllerClient, hosts: list[str], out: Out) -> int:
    """A live table of hosts, one row each, refreshed every second (Ctrl-C to stop)."""
    from rich.live import Live

    try:
        with Live(render.hosts_table(client.health(hosts)), console=out.console, refresh_per_second=2) as live:
            while True:
                time.sleep(1.0)
                live.update(render.hosts_table(client.health(hosts)))
    except KeyboardInterrupt:
        return EXIT_OK


def _show_job(job: Job, as_json: bool, out: Out) -> None:
    if as_json:
        out.json(render.job_doc(job))
        return
    out.show(render.jobs_table([job]))
    asked = " (asked with --encrypt)" if job.options.encrypt else ""
    out.line(f"  data plane: {render.transport_text(render.job_transport(job))}{asked}")
    if job.schedule_id:
        out.line(f"  queued by schedule {job.schedule_id} (zc-ctl schedules)")
    for a in job.history:
        status = a.error or ("running" if not a.ended_at else "ok")
        over = f"; {render.transport_text(a.stats.transport)}" if a.stats.transport else ""
        wire = render.wire_text(a.stats)
        over += f"; {wire}" if wire else ""
        out.line(f"  attempt {a.number}: {render.progress_text(a.stats)}{over}; {status}")
    for line in render.skipped_lines(job):
        out.line(line)
    if job.options.dry_run and job.state is JobState.DONE:
        out.line("  " + render_plan.plan_summary(job))
        for line in render_plan.plan_lines(job):
            out.line("  " + line)


def _watch_rules(args: argparse.Namespace, client: ControllerClient, out: Out) -> int:
    from zcrepl.cli import render_watch  # watch-rule types load only for these commands

    if args.action:
        if args.id is None:
            raise UserError(f"zc-ctl syncs {args.action} needs a rule ID; zc-ctl syncs lists them")
        rule = client.watch_rule_action(args.action, args.id)
        if args.json:
            out.json(render_watch.watch_rule_doc(rule))
        else:
            done = {"pause": "paused", "resume": "resumed (it reconciles first)", "remove": "removed"}[args.action]
            out.line(f"watch rule {rule.id} {done}")
        return EXIT_OK
    if args.watch and not args.json:
        from rich.live import Live

        try:
            table = render_watch.watch_rules_table(client.watch_rules())
            with Live(table, console=out.console, refresh_per_second=2) as live:
                while True:
                    time.sleep(1.0)
                    live.update(render_watch.watch_rules_table(client.watch_rules()))
        except KeyboardInterrupt:
            return EXIT_OK
    rules = client.watch_rules()
    if args.json:
        out.json([render_watch.watch_rule_doc(r) for r in rules])
    else:
        out.show(render_watch.watch_rules_table(rules))
    return EXIT_OK


def _create_watch_rule(args: argparse.Namespace, client: ControllerClient, options: JobOptions, out: Out,
                 err: Out) -> int:
    from zcrepl.cli import render_watch  # watch-rule types load only for these commands
    from zcrepl.core.watchtypes import WatchPhase

    src, dsts = parse_endpoint(args.src), [parse_endpoint(d) for d in args.dst]
    rule = client.create_watch_rule(src, dsts, options, args.window, args.quiet)
    if not args.detach:
        # Follow the first reconciliation, so a bad path or an unreachable host shows here and now.
        with err.status(f"watch rule {rule.id}: starting") as update:
            while True:
                rule = next((r for r in client.watch_rules() if r.id == rule.id), rule)
                update(f"watch rule {rule.id}: {rule.status}")
                first_scan = rule.counters.reconciles > 0 and rule.phase is not WatchPhase.RECONCILING
                if rule.phase.settled or (rule.phase is WatchPhase.WATCHING and first_scan):
                    break
                time.sleep(0.2)
    if args.json:
        out.json(render_watch.watch_rule_doc(rule))
    elif rule.phase is WatchPhase.FAILED:
        err.line(f"zc-ctl: watch rule {rule.id} {rule.status}; fix it and run zc-ctl syncs resume {rule.id} "
                 f"(or zc-ctl syncs remove {rule.id})")
        return EXIT_JOB_FAILED
    else:
        c = rule.counters
        out.line(f"watch rule {rule.id} {rule.status or 'created'}: {src} -> "
                 f"{', '.join(map(str, dsts))}; first scan moved {c.files} files "
                 f"({size(c.bytes)}); zc-ctl syncs shows its lag")
    return EXIT_OK


def filter_rules(given: list[tuple[str, str]]) -> tuple[str, ...]:
    """The job's rules from the filter options in the order given (rsync's reading: see core.filters)."""
    if not given:
        return ()  # the usual case: the rules' module is not even loaded (~1 ms of a command's start)
    from zcrepl.core.filters import FilterError, check_rules, collapse, from_arg, from_lines

    rules: list[str] = []
    for kind, value in given:
        include = kind.startswith("include")
        if kind.endswith("-from"):
            try:
                if value == "-":
                    data = sys.stdin.buffer.read()
                else:
                    with open(value, "rb") as f:
                        data = f.read(MAX_RULES_FILE + 1)
            except OSError as e:
                raise UserError(f"cannot read --{kind} file {value}: {e.strerror}; check the path") from e
            if len(data) > MAX_RULES_FILE:
                raise UserError(f"--{kind} file {value} is larger than {MAX_RULES_FILE:,} bytes; "
                                "merge its patterns with wildcards")
            rules.extend(from_lines(data, include))
        else:
            rule = from_arg(value, include)
            if rule is not None:
                rules.append(rule)
    out = collapse(rules)
    try:
        check_rules(out)
    except FilterError as e:
        raise UserError(str(e)) from None
    return tuple(out)


def job_options(args: argparse.Namespace) -> JobOptions:
    """The options of ``ctl.job_options`` as a job carries them (replicate's and schedule add's)."""
    durability = args.durability or (Durability.NONE.value if args.watch else Durability.JOB.value)
    return JobOptions(delete=args.delete or args.delete_excluded, checksum=args.checksum, bwlimit=args.bwlimit,
                      max_attempts=args.max_attempts, streams=args.streams,
                      durability=Durability(durability), xattrs=args.xattrs,
                      priority=Priority[args.priority.upper()], encrypt=args.encrypt,
                      filters=filter_rules(args.filters), delete_excluded=args.delete_excluded,
                      dry_run=args.dry_run, backup_dir=args.backup_dir, link_dest=tuple(args.link_dest),
                      compress=args.compress, compress_level=args.compress_level)


def _replicate(args: argparse.Namespace, client: ControllerClient, out: Out, err: Out) -> int:
    src, dsts = parse_endpoint(args.src), [parse_endpoint(d) for d in args.dst]
    options = job_options(args)
    if args.command == "snapshot":
        options = snapshot_job(args, options)
    if args.watch:
        if args.dry_run:
            raise UserError("--dry-run plans one run; a --watch rule runs for ever: drop one of them")
        if args.compress is Compress.ON:
            raise UserError("-z/--compress applies to jobs; a --watch rule sends uncompressed: drop one of them")
        return _create_watch_rule(args, client, options, out, err)
    if args.dry_run:  # each destination compares itself with the source: no fan-out (no copy feeds another)
        return _dry_run(args, client, src, dsts, options, out, err)
    jobs = client.submit_fanout(src, dsts, options) if len(dsts) > 1 else [client.submit(src, dsts[0], options)]
    ids = ", ".join(str(j.id) for j in jobs)
    if args.detach:
        if args.json:
            out.json(render.job_doc(jobs[0]) if len(jobs) == 1 else [render.job_doc(j) for j in jobs])
        else:
            out.line(f"job {ids} queued; follow with: zc-ctl job {jobs[0].id}")
        return EXIT_OK
    try:
        jobs = [_follow(client, jobs[0], err)] if len(jobs) == 1 else _follow_group(client, jobs, err)
    except KeyboardInterrupt:
        err.line(f"zc-ctl: stopped watching; job {ids} keeps running "
                 f"(zc-ctl job {jobs[0].id} to follow, zc-ctl cancel {jobs[0].id} to stop it)")
        return EXIT_INTERRUPTED
    return _report_ended(jobs, args.json, out, err)


def _report_ended(jobs: list[Job], as_json: bool, out: Out, err: Out) -> int:
    """The followed jobs' outcome: JSON or a summary each, one line per failure and per job that skipped or could
    not copy files, and the exit code that says the worst of them."""
    if as_json:
        out.json(render.job_doc(jobs[0]) if len(jobs) == 1 else [render.job_doc(j) for j in jobs])
    failed = [j for j in jobs if j.state is not JobState.DONE]
    for j in jobs:
        if j.state is JobState.DONE and not as_json:
            out.line(render.job_summary(j))
            if j.options.snapshot:
                out.line(render.snapshot_summary(j))
    for j in failed:
        err.line(f"zc-ctl: job {j.id} ({j.destination.host}) {j.state.value}: {j.error}")
    skipped = [j for j in jobs if j.done_with_skips]
    errors = [j for j in jobs if j.done_with_errors]
    for j in errors:
        listed = [x for x in j.skipped if x.error]
        first = f" (first: {show(listed[0].path)}: {listed[0].reason})" if listed else ""
        n = j.progress.file_errors
        err.line(f"zc-ctl: job {j.id} ({j.destination.host}) done with {n} error{'s' if n != 1 else ''}{first}; "
                 f"zc-ctl job {j.id} lists the files not copied")
    for j in skipped:
        listed = [x for x in j.skipped if not x.error]
        first = f" (first: {show(listed[0].path)}: {listed[0].reason})" if listed else ""
        err.line(f"zc-ctl: job {j.id} ({j.destination.host}) done with {j.progress.entries_skipped} entries "
                 f"skipped{first}; zc-ctl job {j.id} lists them")
    return (EXIT_JOB_FAILED if failed else EXIT_FILE_ERRORS if errors else EXIT_SKIPPED if skipped
            else EXIT_OK)


def snapshot_job(args: argparse.Namespace, options: JobOptions) -> JobOptions:
    """``options`` (replicate's) made a snapshot rule's: zc-ctl snapshot, or a schedule of one."""
    if args.watch or args.dry_run:
        raise UserError(f"{'--watch' if args.watch else '--dry-run'} is refused for a snapshot: a snapshot is one "
                        "complete copy made at one time; use zc-ctl replicate for that")
    return replace(options, snapshot=True, keep_daily=args.keep_daily, keep_weekly=args.keep_weekly,
                   keep_monthly=args.keep_monthly)


def _dry_run(args: argparse.Namespace, client: ControllerClient, src: Endpoint, dsts: list[Endpoint],
             options: JobOptions, out: Out, err: Out) -> int:
    """Submit one planning job per destination and print each plan (rsync -n -i), or, with --json, the plan as a
    list of objects (several destinations: one list per job, in an object with its id and totals)."""
    jobs = [client.submit(src, d, options) for d in dsts]
    if args.detach:
        out.line(f"job {', '.join(str(j.id) for j in jobs)} queued; its plan: zc-ctl job {jobs[0].id}")
        return EXIT_OK
    try:
        jobs = [_follow(client, j, err) for j in jobs]
    except KeyboardInterrupt:
        err.line(f"zc-ctl: stopped watching; the dry run goes on (zc-ctl job {jobs[0].id} shows its plan)")
        return EXIT_INTERRUPTED
    failed = [j for j in jobs if j.state is not JobState.DONE]
    if args.json:
        docs = [[render_plan.item_doc(x) for x in j.plan] for j in jobs]
        out.json(docs[0] if len(jobs) == 1 else [{"job": j.id, "destination": str(j.destination),
                                                   "totals": render.stats_doc(j.progress), "plan": d}
                                                  for j, d in zip(jobs, docs, strict=True)])
    for j in jobs:
        if j.state is JobState.DONE:
            if not args.json:
                for line in render_plan.plan_lines(j):
                    out.line(line)
            (err if args.json else out).line(render_plan.plan_summary(j))
        else:
            err.line(f"zc-ctl: job {j.id} ({j.destination.host}) {j.state.value}: {j.error}")
    return EXIT_JOB_FAILED if failed else EXIT_OK


def _follow_group(client: ControllerClient, jobs: list[Job], err: Out) -> list[Job]:
    """One progress line per destination of a fan-out, until every job is final."""
    progress = _progress(err, eta=False)
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


def _follow(client: ControllerClient, job: Job, err: Out) -> Job:
    progress = _progress(err, eta=True)
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


class _NoBar:
    """Stands in for rich's Progress off a terminal, where rich draws nothing (the bars are transient)."""

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, description: str, **fields: Any) -> TaskID:
        return cast("TaskID", 0)

    def update(self, task: TaskID, **fields: Any) -> None:
        return None


def _progress(err: Out, eta: bool) -> Progress | _NoBar:
    if not err.terminal:
        return _NoBar()
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[files]}"), DownloadColumn(),
               TransferSpeedColumn(), *([TimeRemainingColumn()] if eta else [])]
    return Progress(*columns, console=err.console, transient=True)


_Command = Callable[[argparse.Namespace, ControllerClient, Out, Out], int]
# One handler per zc-ctl command that talks to the controller (pki and demo never get here).
_COMMANDS: dict[str, _Command] = {
    "replicate": _replicate,
    "snapshot": _replicate,
    "snapshots": _snapshots,
    "agents": _agents,
    "health": _health,
    "jobs": _jobs,
    "job": _job,
    "explain": _explain,
    "syncs": lambda a, c, o, e: _watch_rules(a, c, o),
    "schedule": _schedules,
    "schedules": _schedules,
    "token": lambda a, c, o, e: _certs(a, c, o),
    "cert": lambda a, c, o, e: _certs(a, c, o),
    "cancel": _cancel,
}
