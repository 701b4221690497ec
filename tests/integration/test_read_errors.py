"""Source files that cannot be read (issue 10, item 4): each is reported with the OS's reason, the rest of the
tree is copied, and the job ends "done with N errors" (zc-ctl exit 6), apart from "skipped" (exit 4).

The source agent runs as root without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH (``setpriv``), so file
permissions bind it like any user: a file made unreadable is really unreadable to it, at the scan or later,
when its bytes are about to be sent. A file is made unreadable or removed *while the job runs* by pacing the
job (one data stream, ``--bwlimit``) so that a large file sorted first is still on the wire when the test acts;
the files acted on come later in the same single queue, so they are opened after the test acted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from zchelpers import Cluster, Daemon, diff_trees, snapshot, wait_for, write_file

NO_DAC = ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]
BIG = 6 << 20  # at 2 MB/s: three seconds on the wire, while the test acts


@pytest.fixture(scope="module")
def capless(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """hostA (the source) runs without the capabilities that let root read anything; hostB is a root agent."""
    base = tmp_path_factory.mktemp("readerr")
    c = Cluster(base)
    try:
        c.controller.start()
        (base / "a").mkdir()
        argv = [*NO_DAC, sys.executable, "-m", "zcrepl.agent", "--name", "hostA", "--controller",
                c.controller_addr, "--listen", "127.0.0.1:0", "--data-listen", "127.0.0.1:0", "--ready-file",
                str(base / "hostA.json"), "--log-level", "debug", "--export", str(base / "a"),
                "--state-dir", str(base / "hostA.state"), *c.pki.flags("agent", "hostA")]
        c.daemons["hostA"] = Daemon("hostA", argv, base / "hostA.json", base / "hostA.log")
        c.daemons["hostA"].start()
        c.add_agent("hostB", base / "b").start()
        c.wait_online("hostA", "hostB")
        yield c
    finally:
        c.close()


def start_ctl(c: Cluster, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "zcrepl.cli.ctl", "--controller", c.controller_addr,
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "COLUMNS": "200", **c.pki.env()})


def on_the_wire(c: Cluster) -> int:
    """The id of the newest job once its scan is over and its first file is being sent."""
    with c.client() as client:
        def sending() -> int | None:
            jobs = client.jobs(limit=1)
            j = jobs[0] if jobs else None
            if j is None or j.state.value != "running":
                return None
            return j.id if j.progress.scan_done and 0 < j.progress.bytes_done < BIG else None
        return int(wait_for(sending, 30, interval=0.05, what="the big file on the wire"))


def no_temps(root: Path) -> list[str]:
    return [str(p) for p in root.rglob(".zc*") if ".zc.partial" not in p.parts]


def test_files_that_vanish_or_become_unreadable_mid_job(capless: Cluster) -> None:
    base = capless.base
    src, dst = base / "a" / "mid", base / "b" / "mid"
    for d in (src / "m", src / "z", dst / "z"):
        d.mkdir(parents=True)
    write_file(src / "a-big", os.urandom(BIG))
    for i in range(50):
        write_file(src / "m" / f"f{i:02d}", b"small %d" % i)
    write_file(src / "z" / "gone", b"deleted while the job runs")
    write_file(src / "z" / "gone-here-too", b"also deleted; the destination has an old copy")
    write_file(src / "z" / "locked", b"new content nobody may read")
    write_file(src / "z" / "ok", b"the last file")
    write_file(dst / "z" / "locked", b"the copy from last week")
    write_file(dst / "z" / "gone-here-too", b"an old copy")

    proc = start_ctl(capless, "replicate", "--streams", "1", "--bwlimit", "2M", f"hostA:{src}", f"hostB:{dst}")
    try:
        job_id = on_the_wire(capless)
        (src / "z" / "gone").unlink()
        (src / "z" / "gone-here-too").unlink()
        os.chmod(src / "z" / "locked", 0o000)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 6, err
    assert f"job {job_id} done with 1 error, 2 skipped" in out.decode()
    assert (f"zc-ctl: job {job_id} (hostB) done with 1 error (first: z/locked: cannot be read at the source "
            "(Permission denied)") in err.decode()

    # The rest of the tree is there (z's mtime is the scan's: the test changed z after); the unreadable file's
    # old copy is kept; nothing else is left.
    want = {k: v for k, v in snapshot(src).items() if k not in (b"z/locked", b"z")}
    got = snapshot(dst)
    assert got.pop(b"z")[0] == "dir" and got.pop(b"z/locked")[0] == "file"
    assert (dst / "z" / "locked").read_bytes() == b"the copy from last week"
    assert got.pop(b"z/gone-here-too")[0] == "file"  # vanished at the source: not an error, not deleted here
    assert diff_trees(want, got) == []
    assert not (dst / "z" / "gone").exists() and no_temps(dst) == []

    doc = capless.job(job_id)
    assert doc["state"] == "done" and doc["done_with_errors"] and doc["done_with_skips"]
    assert doc["progress"]["file_errors"] == 1 and doc["progress"]["entries_skipped"] == 2
    assert doc["errors"] == [{"path": "z/locked", "reason": "cannot be read at the source (Permission denied): "
                              "not replicated, and the destination keeps what it has there; make it readable by "
                              "zc-agent and run the job again"}]
    assert {x["path"]: x["reason"] for x in doc["skipped"]} == {
        p: "vanished from the source during the job (No such file or directory): not replicated"
        for p in ("z/gone", "z/gone-here-too")}

    rc, text, _ = capless.ctl("job", str(job_id))
    assert rc == 0
    assert ("1 file could not be read (not replicated):\n  z/locked: cannot be read at the source "
            "(Permission denied)") in text
    assert "2 entries skipped (not replicated):\n  z/gone: vanished from the source" in text
    rc, text, _ = capless.ctl("jobs")
    assert rc == 0 and "done with 1 error" in text

    capless.controller.stop()  # the list is durable like the rest of the job
    capless.controller.start()
    capless.wait_online("hostA", "hostB")
    again = capless.job(job_id)
    assert again["errors"] == doc["errors"] and again["skipped"] == doc["skipped"]
    os.chmod(src / "z" / "locked", 0o644)


def test_unreadable_at_the_scan_on_the_same_host(capless: Cluster) -> None:
    """A same-host copy reads through the same scan and reports the same way."""
    base = capless.base
    src, dst = base / "a" / "local", base / "a" / "local-copy"
    src.mkdir()
    dst.mkdir()
    write_file(src / "open", b"readable")
    write_file(src / "secret", b"nobody may read this", mode=0o000)
    write_file(dst / "secret", b"old secret")
    rc, out, err = capless.ctl("replicate", f"hostA:{src}", f"hostA:{dst}", "--json")
    assert rc == 6, err
    doc = json.loads(out)
    assert doc["done_with_errors"] and doc["progress"]["file_errors"] == 1
    assert [x["path"] for x in doc["errors"]] == ["secret"] and doc["skipped"] == []
    assert doc["errors"][0]["reason"].startswith("cannot be read at the source (Permission denied)")
    assert (dst / "open").read_bytes() == b"readable" and (dst / "secret").read_bytes() == b"old secret"
