"""Kill cycles on the network test bed: jobs and a watch rule with a steady writer run while a random component
(controller, source agent, destination agent) is SIGKILLed at a random moment and restarted, again and again.

Then: every job is done; no job ever had two live attempts at once, neither in the controller's record nor at the
destination (its log says when each attempt became ready and when it stopped touching files); every tree matches
exactly, the watched one with every change the writer made; and nothing named ``.zc.*`` is left outside
``.zc.partial/``. 5 kills in the normal suite; the 20-kill soak is ``pytest -m slow -k kill`` (or ZC_SLOW=1).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from zchelpers import BedCluster, Cluster, diff_trees, make_tree, snapshot, wait_for

COMPONENTS = ("controller", "hostA", "hostB")
_KV = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def _fields(line: str) -> dict[str, str]:
    return {k: v.strip('"') for k, v in _KV.findall(line)}


def _overlaps_at_destination(log: str) -> list[str]:
    """(job, attempt) pairs that became ready while another attempt of the same job still ran there."""
    live: dict[int, int] = {}
    problems = []
    for line in log.splitlines():
        f = _fields(line)
        msg = f.get("msg", "")
        if msg == "agent serving":  # a new process: whatever the killed one ran has ended with it
            live.clear()
        elif msg == "receive ready":
            job, attempt = int(f["job"]), int(f["attempt"])
            if job in live and live[job] != attempt:
                problems.append(f"job {job}: attempt {attempt} ready while attempt {live[job]} still ran: {line}")
            live[job] = attempt
        elif msg == "attempt ended here" and f.get("role") == "receiver":
            job, attempt = int(f["job"]), int(f["attempt"])
            if live.get(job) == attempt:
                del live[job]
    return problems


def _overlaps_in_controller(job: dict[str, Any]) -> list[str]:
    spans = sorted((a["started_at"], a["ended_at"] or float("inf"), a["number"]) for a in job["history"])
    return [f"job {job['id']}: attempt {b[2]} started before attempt {a[2]} ended"
            for a, b in itertools.pairwise(spans) if b[0] < a[1]]


def _leftovers(tree: Path) -> list[Path]:
    return [p for p in tree.rglob(".zc.*") if ".zc.partial" not in p.parts[len(tree.parts):]]


class Writer(threading.Thread):
    """Writes a new small file into the watched tree every 50 ms, each closed before the next."""

    def __init__(self, root: Path) -> None:
        super().__init__(name="steady-writer", daemon=True)
        self.root, self.stop, self.written = root, threading.Event(), 0

    def run(self) -> None:
        while not self.stop.wait(0.05):
            d = self.root / f"d{self.written % 7}"
            d.mkdir(exist_ok=True)
            (d / f"f{self.written:05d}").write_bytes(os.urandom(2048))
            self.written += 1


@pytest.mark.parametrize("kills", [5, pytest.param(20, marks=pytest.mark.slow)])
def test_kill_cycles(make_bed_cluster: BedCluster, tmp_path: Path, kills: int) -> None:
    seed = int(os.environ.get("ZC_KILL_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    c: Cluster = make_bed_cluster(max_attempts=100, agent_flags=("--io-timeout", "5"))
    c.bed.shape("hostA", "hostB", 100)
    trees = []
    for i in range(4):
        src = tmp_path / "a" / f"src{i}"
        make_tree(src, files=40, big=16 << 20, seed=i)
        trees.append((src, tmp_path / "b" / f"dst{i}"))
    wsrc, wdst = tmp_path / "a" / "watched", tmp_path / "b" / "watched"
    wsrc.mkdir()
    rc, _, err = c.ctl("replicate", "--watch", f"hostA:{wsrc}", f"hostB:{wdst}")
    assert rc == 0, err
    writer = Writer(wsrc)
    writer.start()
    jobs = []
    try:
        for src, dst in trees:
            rc, out, err = c.ctl("replicate", "--detach", "--json", f"hostA:{src}", f"hostB:{dst}")
            assert rc == 0, err
            jobs.append(json.loads(out)["id"])
        killed = []
        for _ in range(kills):
            time.sleep(rng.uniform(0.5, 3.0))
            name = rng.choice(COMPONENTS)
            killed.append(name)
            c.daemons[name].send_signal(signal.SIGKILL)
            c.daemons[name].kill()  # reap it
            time.sleep(rng.uniform(0.0, 1.0))
            c.daemons[name].start()
        c.wait_online("hostA", "hostB", timeout=60)
    finally:
        writer.stop.set()
        writer.join()
    why = f"(seed {seed}, kills {killed}; ZC_KILL_SEED={seed} repeats them)"

    done = [wait_for(lambda j=j: (x := c.job(j))["state"] in ("done", "failed") and x, 120, interval=0.3,
                     what=f"job {j} to finish {why}") for j in jobs]
    assert all(j["state"] == "done" for j in done), [(j["id"], j["error"]) for j in done]
    problems = [p for j in done for p in _overlaps_in_controller(j)]
    problems += _overlaps_at_destination(c.daemons["hostB"].log())
    assert not problems, f"{why}: {problems}"
    for src, dst in trees:
        assert not diff_trees(snapshot(src), snapshot(dst)), f"{dst} {why}"
    try:
        wait_for(lambda: not diff_trees(snapshot(wsrc), snapshot(wdst)), 60, interval=0.5,
                 what="the watched tree to converge")
    except AssertionError:
        raise AssertionError(f"{why}: {diff_trees(snapshot(wsrc), snapshot(wdst))[:5]}") from None
    assert writer.written > 0
    wait_for(lambda: not _leftovers(tmp_path / "b"), 20, what=f"no .zc.* left outside .zc.partial {why}")


def test_the_overlap_checks_see_an_overlap() -> None:
    """The checks above can fail: two attempts of a job live at once, at the destination or in the record."""
    log = "\n".join([
        'ts=1 level=info msg="agent serving" name=hostB',
        'ts=2 level=info msg="receive ready" job=3 attempt=1 path=/x',
        'ts=3 level=info msg="receive ready" job=3 attempt=2 path=/x',
        'ts=4 level=debug msg="attempt ended here" job=3 attempt=1 role=receiver',
        'ts=5 level=info msg="agent serving" name=hostB',
        'ts=6 level=info msg="receive ready" job=3 attempt=3 path=/x',
    ])
    assert len(_overlaps_at_destination(log)) == 1
    history = [{"number": 1, "started_at": 1.0, "ended_at": 5.0}, {"number": 2, "started_at": 4.0, "ended_at": 0}]
    assert _overlaps_in_controller({"id": 3, "history": history})
