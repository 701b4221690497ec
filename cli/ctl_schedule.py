"""zc-ctl's schedule commands: ``schedule add|pause|resume|remove`` and ``schedules``."""

from __future__ import annotations

import argparse

from zcrepl.cli.client import ControllerClient
from zcrepl.cli.ctl_commands import job_options, snapshot_job
from zcrepl.cli.ctl_out import EXIT_OK, Out
from zcrepl.cli.render_schedule import schedule_doc, schedules_table, when_due
from zcrepl.core.errors import UserError
from zcrepl.core.paths import parse_endpoint


def run(args: argparse.Namespace, client: ControllerClient, out: Out) -> int:
    if args.command == "schedules":
        items = client.schedules()
        if args.json:
            out.json([schedule_doc(s) for s in items])
        else:
            out.show(schedules_table(items))
        return EXIT_OK
    if args.schedule_command == "add":
        options = job_options(args)
        if args.snapshot:
            options = snapshot_job(args, options)
        elif args.keep_daily or args.keep_weekly or args.keep_monthly:
            raise UserError("--keep-daily/--keep-weekly/--keep-monthly prune snapshots: add --snapshot")
        s = client.create_schedule(parse_endpoint(args.src), parse_endpoint(args.dst), options,
                                   cron=args.cron or "", every=args.every or 0.0, tz=args.tz)
        if args.json:
            out.json(schedule_doc(s))
        else:
            out.line(f"schedule {s.id} added: {s.source} -> {s.destination}, {s.when}; next run "
                     f"{when_due(s.next_due, s.created_at)}; zc-ctl schedules shows its runs")
        return EXIT_OK
    s = client.schedule_action(args.schedule_command, args.id)
    if args.json:
        out.json(schedule_doc(s))
    else:
        done = {"pause": "paused", "remove": "removed",
                "resume": f"resumed; next run {when_due(s.next_due, s.created_at)}"}[args.schedule_command]
        out.line(f"schedule {s.id} {done}")
    return EXIT_OK
