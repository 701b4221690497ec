"""rsync's spellings on zc-ctl replicate, the controller's edge checks of --backup-dir/--link-dest and of a dry
run's options, the bounds on a reported plan, the itemized rendering, and the plan in the store."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from zcrepl.cli import ctl
from zcrepl.cli.render_plan import itemize
from zcrepl.controller import validate
from zcrepl.controller.runs import Run, rate_limited
from zcrepl.controller.store import open_store
from zcrepl.core.errors import InvalidArgument, InvalidPath
from zcrepl.core.types import (
    PLAN_LISTED,
    Endpoint,
    Job,
    JobOptions,
    JobState,
    Phase,
    PlanItem,
    Role,
    TransferReport,
    TransferStats,
)


def test_rsync_spellings_parse_to_the_same_options() -> None:
    short = ctl.build_parser().parse_args(["replicate", "-n", "-c", "--delete", "--bwlimit", "1M", "--exclude",
                                           "*.o", "--include", "k", "--link-dest", "../a", "--link-dest", "/e/b",
                                           "--backup-dir", "../bak", "hostA:/s", "hostB:/e/d"])
    long = ctl.build_parser().parse_args(["replicate", "--dry-run", "--checksum", "--delete", "--bwlimit", "1M",
                                          "--exclude", "*.o", "--include", "k", "--link-dest", "../a", "--link-dest",
                                          "/e/b", "--backup-dir", "../bak", "hostA:/s", "hostB:/e/d"])
    assert vars(short) == vars(long)
    assert short.dry_run and short.checksum and short.link_dest == [b"../a", b"/e/b"] and short.backup_dir == b"../bak"
    assert short.filters == [("exclude", "*.o"), ("include", "k")]


def test_help_lists_the_options_in_groups() -> None:
    sub = next(a for a in ctl.build_parser()._actions if a.dest == "command")
    text = sub.choices["replicate"].format_help()  # type: ignore[attr-defined]
    for title in ("what is compared and changed:", "deletion, backups and snapshots:", "filters:",
                  "how it moves:", "queue:", "continuous mirroring:", "output:"):
        assert title in text, title
    assert "-n, --dry-run" in text and "-c, --checksum" in text and "--link-dest DIR" in text


SRC, DST = Endpoint("hostA", b"/e/src"), Endpoint("hostB", b"/e/snaps/today")
EXPORTS = (b"/e",)


@pytest.mark.parametrize("backup,links,want_backup,want_links", [
    (b"../bak", (), b"/e/snaps/bak", ()),
    (b"/e/bak", (b"../yesterday", b"/e/old"), b"/e/bak", (b"/e/snaps/yesterday", b"/e/old")),
    (b"", (b"../../other/x",), b"", (b"/e/other/x",)),
])
def test_job_dirs_resolve_against_the_destination(backup: bytes, links: tuple[bytes, ...], want_backup: bytes,
                                                  want_links: tuple[bytes, ...]) -> None:
    o = validate.job_dirs(SRC, DST, JobOptions(backup_dir=backup, link_dest=links), EXPORTS)
    assert (o.backup_dir, o.link_dest) == (want_backup, want_links)


@pytest.mark.parametrize("backup,links,says", [
    (b"/etc/bak", (), "outside hostB's exports (/e)"),
    (b"../../../../..", (), "outside hostB's exports"),
    (b"sub", (), "overlaps the destination hostB:/e/snaps/today"),
    (b".", (), "overlaps the destination"),
    (b"..", (), "overlaps the destination"),  # /e/snaps holds DST: a file named "today" would land on DST
    (b"", (b"/e/snaps/today/x",), "overlaps the destination"),
    (b"/e/bak", (b"/e/bak",), "name the same directory"),
    (b"a\0b", (), "give a directory on hostB"),
])
def test_job_dirs_refused(backup: bytes, links: tuple[bytes, ...], says: str) -> None:
    with pytest.raises(InvalidPath, match=says.replace("(", r"\(").replace(")", r"\)")):
        validate.job_dirs(SRC, DST, JobOptions(backup_dir=backup, link_dest=links), EXPORTS)


def test_job_dirs_refuse_the_source_on_the_same_host() -> None:
    src = Endpoint("hostB", b"/e/src")
    with pytest.raises(InvalidPath, match="overlaps the source"):
        validate.job_dirs(src, DST, JobOptions(link_dest=(b"/e/src/old",)), EXPORTS)


def test_options_bounds_and_dry_run_rules() -> None:
    with pytest.raises(InvalidArgument, match="at most 20"):
        validate.options(JobOptions(link_dest=tuple(b"/e/%d" % i for i in range(21))))
    # A dry run writes nothing: its backup and link directories are dropped, not checked.
    assert validate.options(JobOptions(dry_run=True, backup_dir=b"/x", link_dest=(b"/y",))).backup_dir == b""
    with pytest.raises(InvalidArgument, match="one dry-run job per destination"):
        validate.several(JobOptions(dry_run=True), "a fan-out")
    with pytest.raises(InvalidArgument, match="refused for a watch rule"):
        validate.several(JobOptions(backup_dir=b"/e/b"), "a watch rule")
    assert validate.several(JobOptions(backup_dir=b"/e/b"), "a fan-out").backup_dir == b"/e/b"


def test_a_reported_plan_is_bounded() -> None:
    items = tuple(PlanItem(b"p%d" % i, "created", "file", (), 1) for i in range(PLAN_LISTED + 50))
    r = validate.report(TransferReport(1, 1, Role.RECEIVER, Phase.DONE, plan=items))
    assert len(r.plan) == PLAN_LISTED
    huge = (PlanItem(b"x" * 100_000, "bogus", "file", ("size", "<script>"), -5, b"t" * 10),) * 30
    r = validate.report(TransferReport(1, 1, Role.RECEIVER, Phase.DONE, plan=huge))
    assert r.plan[0] == PlanItem(b"x" * 4096, "?", "file", ("size",), 0, b"t" * 10)
    assert len(r.plan) == 10  # 1 MiB of paths as sent, at most
    ok = (PlanItem(b"a", "updated", "file", ("mtime",), 3),)
    assert validate.report(TransferReport(1, 1, Role.RECEIVER, Phase.DONE, plan=ok)).plan is ok


@pytest.mark.parametrize("item,code", [
    (PlanItem(b"f", "created", "file", (), 5), ">f+++++++++"),
    (PlanItem(b"d", "created", "dir"), "cd+++++++++"),
    (PlanItem(b"l", "created", "symlink", target=b"t"), "cL+++++++++"),
    (PlanItem(b"f", "updated", "file", ("size", "mtime"), 5), ">f.st......"),
    (PlanItem(b"f", "updated", "file", ("content",), 5), ">fc........"),
    (PlanItem(b"f", "updated", "file", ("mode",), 0), ".f...p....."),
    (PlanItem(b"f", "updated", "file", ("mtime",), 0), ".f..t......"),
    (PlanItem(b"d", "updated", "dir", ("mtime", "owner")), ".d..t.o...."),
    (PlanItem(b"l", "updated", "symlink", ("target",), target=b"t"), "cLc........"),
    (PlanItem(b"x", "deleted", "file"), "*deleting  "),
])
def test_itemize_codes_are_rsyncs(item: PlanItem, code: str) -> None:
    assert itemize(item) == code and len(code) == 11


def test_store_keeps_the_plan_and_the_options(tmp_path: Path, store_spec: str) -> None:
    store = open_store(store_spec, str(tmp_path))
    try:
        opts = JobOptions(dry_run=True, backup_dir=b"/e/\xffbak", link_dest=(b"/e/a", b"/e/\xfe"))
        job = store.create_job(SRC, DST, opts, 3, 1.0)
        assert store.get_job(job.id) is not None
        store.start_attempt(job.id, 1, 2.0)
        store.save_job(replace(job, attempts=1, progress=TransferStats(plan_created=2, plan_bytes=9)))
        items = [PlanItem(b"a/\xff", "created", "file", (), 9),
                 PlanItem(b"l", "updated", "symlink", ("target", "mtime"), 0, b"t")]
        store.save_plan(job.id, 1, items)
        got = store.get_job(job.id)
        assert got is not None
        assert got.options == opts and got.plan == tuple(items) and got.progress.plan_created == 2
    finally:
        store.close()


def test_a_dry_run_says_nothing_about_its_links_throughput() -> None:
    run = Run(1, 1, b"t", 0.0, SRC)
    job = Job(1, JobState.RUNNING, SRC, DST, JobOptions(dry_run=True))
    assert rate_limited(job, run) and not rate_limited(replace(job, options=JobOptions()), run)


def test_the_final_stats_take_the_destinations_counts() -> None:
    run = Run(1, 1, b"t", 0.0, SRC)
    run.receiver_done = TransferStats(plan_created=3, plan_bytes=7, linked=2, backed_up=1, files_done=9)
    out = run.with_receiver_counts(TransferStats(files_done=4, wire_bytes=100))
    assert (out.plan_created, out.plan_bytes, out.linked, out.backed_up, out.files_done, out.wire_bytes) == (
        3, 7, 2, 1, 4, 100)
    run.add_plan(TransferReport(1, 1, Role.SENDER, Phase.DONE, plan=(PlanItem(b"x", "created", "file"),)))
    assert run.plan == []  # only the destination plans
    run.add_plan(TransferReport(1, 1, Role.RECEIVER, Phase.DONE, plan=(PlanItem(b"y", "created", "file"),)))
    assert [x.path for x in run.plan] == [b"y"]
