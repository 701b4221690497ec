"""Schedules end to end: zc-ctl adds a one-second schedule to a real controller, whose loop queues ordinary jobs that
real agents run over the data plane; bad input is refused in one sentence and stores nothing. zc-ctl runs in-process
(``ctl.main``): the same parser, client and TLS as the command, without an interpreter start per call."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from zchelpers import Cluster, diff_trees, running, snapshot, wait_for, write_file

from zcrepl.cli.ctl import main


@pytest.fixture(scope="module")
def cl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running(Cluster(tmp_path_factory.mktemp("schedules"))) as c:
        yield c


@pytest.fixture
def ctl(cl: Cluster, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    for k, v in cl.pki.env().items():
        monkeypatch.setenv(k, v)

    def run(*args: str) -> tuple[int, str, str]:
        try:
            rc = main(["--controller", cl.controller_addr, *args])
        except SystemExit as refused:  # argparse's refusals exit from the parser
            rc = int(str(refused.code))
        out, err = capsys.readouterr()
        return rc, out, err

    return run


def _schedule(ctl: Any, sid: int) -> dict[str, Any] | None:
    rc, out, err = ctl("schedules", "--json")
    assert rc == 0, err
    return next((s for s in json.loads(out) if s["id"] == sid), None)


def test_an_every_second_schedule_runs_ordinary_jobs_until_removed(cl: Cluster, ctl: Any) -> None:
    src, dst = cl.base / "a" / "every" / "src", cl.base / "b" / "every" / "dst"
    (src / "sub").mkdir(parents=True)
    write_file(src / "one.txt", b"first version")
    write_file(src / "sub" / "two.bin", b"\0" * 4096)
    rc, out, err = ctl("schedule", "add", "--every", "1s", "--delete", "--priority", "high", f"hostA:{src}",
                       f"hostB:{dst}", "--json")
    assert rc == 0, err
    sid = json.loads(out)["id"]
    assert json.loads(out)["when"] == "every 1s" and json.loads(out)["options"]["priority"] == "high"

    def ran(after: int) -> dict[str, Any] | None:
        s = _schedule(ctl, sid)
        return s if s and (s["last_job_id"] or 0) > after and s["last_state"] == "done" else None

    first = wait_for(lambda: ran(0), 30, interval=0.2, what="a scheduled run done")
    assert not diff_trees(snapshot(src), snapshot(dst))
    job = cl.job(first["last_job_id"])
    assert (job["schedule_id"], job["state"], job["options"]["delete"]) == (sid, "done", True)
    assert first["next_due"] > first["last_run_at"] and first["runs"] >= 1

    write_file(src / "one.txt", b"second version, longer")  # the next run picks it up, as a nightly job would
    (src / "sub" / "two.bin").unlink()
    wait_for(lambda: ran(first["last_job_id"]) and not diff_trees(snapshot(src), snapshot(dst)), 30, interval=0.2,
             what="a later scheduled run with the change")

    rc, out, err = ctl("schedules")
    assert rc == 0 and "every 1s" in out and "active" in out, err  # the table (paths may fold: not asserted)
    rc, out, err = ctl("schedule", "pause", str(sid), "--json")
    assert rc == 0 and json.loads(out)["state"] == "paused" and json.loads(out)["next_due"] is None, err
    rc, out, err = ctl("schedule", "remove", str(sid))
    assert rc == 0 and out.strip() == f"schedule {sid} removed", err
    assert _schedule(ctl, sid) is None


def test_a_scheduled_snapshot_makes_complete_snapshots_and_prunes_them(cl: Cluster, ctl: Any) -> None:
    src, snaps = cl.base / "a" / "snap" / "src", cl.base / "b" / "snap" / "snaps"
    src.mkdir(parents=True)
    write_file(src / "kept.txt", b"the same every night")
    rc, out, err = ctl("schedule", "add", "--every", "1s", "--snapshot", "--keep-daily", "1", f"hostA:{src}",
                       f"hostB:{snaps}", "--json")
    assert rc == 0, err
    made = json.loads(out)
    assert (made["options"]["snapshot"], made["options"]["keep_daily"]) == (True, 1), made["options"]

    def two_runs_done() -> dict[str, Any] | None:
        s = _schedule(ctl, made["id"])
        return s if s and s["runs"] >= 2 and s["last_state"] == "done" else None

    done = wait_for(two_runs_done, 40, interval=0.2, what="two scheduled snapshots done")
    ctl("schedule", "remove", str(made["id"]))
    job = cl.job(done["last_job_id"])
    assert job["options"]["snapshot_name"], job["options"]  # each run named by the controller when it was queued
    complete = sorted(p.name for p in snaps.iterdir() if not p.name.startswith("."))
    assert len(complete) == 1, complete  # --keep-daily 1: the newest of today stays, the earlier ones are pruned
    assert not diff_trees(snapshot(src), snapshot(snaps / complete[0]))


@pytest.mark.parametrize(("args", "words"), [
    (("--every", "1h", "--keep-daily", "3", "hostA:{a}/x", "hostB:{b}/y"), "add --snapshot"),
    (("--cron", "0 0 30 2 *", "hostA:{a}/x", "hostB:{b}/y"), "zc-ctl: cron expression '0 0 30 2 *' is refused (bad "
                                                            "day-of-month"),
    (("--cron", "0 2 * * *", "--tz", "Nowhere/Atlantis", "hostA:{a}/x", "hostB:{b}/y"),
     "zc-ctl: --tz 'Nowhere/Atlantis' is not a time zone this controller knows"),
    (("--every", "1h", "hostZ:{a}/x", "hostB:{b}/y"), "zc-ctl: unknown host 'hostZ'"),
    (("--every", "1h", "hostA:{a}/x", "hostB:relative/y"), "zc-ctl: hostB:relative/y: the path must be absolute"),
    (("--every", "0s", "hostA:{a}/x", "hostB:{b}/y"), "'0s' is not an interval from 1s to 366d"),
    (("--every", "1h", "--cron", "@daily", "hostA:{a}/x", "hostB:{b}/y"), "not allowed with argument"),
])
def test_bad_input_is_one_sentence_and_stores_nothing(cl: Cluster, ctl: Any, args: tuple[str, ...],
                                                      words: str) -> None:
    argv = [a.format(a=cl.base / "a", b=cl.base / "b") for a in args]
    rc, out, err = ctl("schedule", "add", *argv)
    assert (rc, out) == (2, "") and words in err and len(err.strip().splitlines()) == 1, err
    rc, out, _ = ctl("schedules", "--json")
    assert rc == 0 and json.loads(out) == []
