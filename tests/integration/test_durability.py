"""The default ``job`` durability as the destination agent does it: the syscalls it makes during a real job
(strace attached to the receiving agent), and what is on disk when the agent is SIGKILLed right after the job
reported done.

A power loss cannot be staged here; what can be checked is that every file and directory the job wrote is
fsynced before done, that nothing else is (no ``syncfs``: other processes' dirty data is not ours to wait for),
and that a job that changed one file fsyncs that file and its directory only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from zchelpers import Cluster, diff_trees, snapshot, wait_for, write_file

from zcrepl.agent.transfer.flush import CTIME_MARGIN_NS
from zcrepl.agent.transfer.flush import journaled as _journaled

_CALL = re.compile(r"^\d+\s+(fsync|fdatasync|sync_file_range|syncfs)\((\d+)<([^>]*)>(.*)")
_TEMP = re.compile(r"^\.zc\.(.*)\.[0-9a-f]{8}\.[^/]*\.tmp$")


_UNNAMED = re.compile(r"^#(\d+)$")  # an O_TMPFILE file's fd (strace adds "(deleted)"), even once linked in


def _final(path: str) -> str:
    """A temp file's path as its final name (the pool may fsync a file before its rename); an unnamed one's
    by its inode, looked up in its directory (call this after the job)."""
    head, _, leaf = path.rpartition("/")
    m = _TEMP.match(leaf)
    if m:
        return f"{head}/{m.group(1)}"
    m = _UNNAMED.match(leaf)
    if m:
        with os.scandir(head) as entries:
            return next((e.path for e in entries if e.inode() == int(m.group(1))), path)
    return path


class Strace:
    """strace attached to every thread of a running process, recording the flush syscalls with fd paths."""

    def __init__(self, pid: int, out: Path) -> None:
        if shutil.which("strace") is None:
            why = "strace is not installed (apt-get install strace; .ci/run does it)"
            if os.environ.get("CI"):
                pytest.fail(why)  # CI installs it: a missing strace there is a broken setup, not a skip
            pytest.skip(why)
        self.pid, self.out = pid, out
        self.proc = subprocess.Popen(["strace", "-f", "-qq", "-y", "-o", str(out), "-p", str(pid),
                                      "-e", "trace=fsync,fdatasync,sync_file_range,syncfs"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(self._attached, 10, what="strace to attach to every thread of the agent")
        except AssertionError:
            self.stop()
            pytest.skip("strace cannot attach here (ptrace refused)")

    def _attached(self) -> bool:
        if self.proc.poll() is not None:
            return False
        for task in os.listdir(f"/proc/{self.pid}/task"):
            try:
                status = Path(f"/proc/{self.pid}/task/{task}/status").read_text()
            except FileNotFoundError:
                continue
            if re.search(r"^TracerPid:\s+0$", status, re.M):
                return False
        return True

    def stop(self) -> list[tuple[str, str]]:
        """Detach; the calls in order as (syscall, path of the fd with temp names mapped to final ones); a
        sync_file_range that waits for the data is "wait"."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        self.proc.wait(20)
        calls = []
        for line in self.out.read_text().splitlines():
            m = _CALL.match(line)
            if m:
                name = "wait" if "WAIT_AFTER" in m.group(4) else m.group(1)
                calls.append((name, _final(m.group(3))))
        return calls


def _paths(calls: list[tuple[str, str]], name: str) -> set[str]:
    return {path for call, path in calls if call == name}


def journaled(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return _journaled(fd)
    finally:
        os.close(fd)


def _tree(root: Path, files: int) -> list[Path]:
    made = []
    for i in range(files):
        p = root / f"d{i % 4}" / ("deep" if i % 3 == 0 else "") / f"f{i:04d}.dat"
        p.parent.mkdir(parents=True, exist_ok=True)
        write_file(p, os.urandom(100 + i * 37 % 9000))
        made.append(p)
    return made


def test_job_durability_fsyncs_what_the_job_wrote_and_nothing_else(cluster: Cluster, tmp_path: Path) -> None:
    src, dst = tmp_path / "a" / "src", tmp_path / "b" / "new" / "dst"
    files = _tree(src, 150)  # more than one batch of the flush pool
    agent_b = cluster.daemons["hostB"]
    assert agent_b.proc is not None
    trace = Strace(agent_b.proc.pid, tmp_path / "strace.out")
    try:
        rc, out, err = cluster.ctl("replicate", f"hostA:{src}", f"hostB:{dst}", "--json")
    finally:
        calls = trace.stop()
    assert rc == 0, err
    assert json.loads(out)["options"]["durability"] == "job"
    assert not diff_trees(snapshot(src), snapshot(dst))
    assert not _paths(calls, "syncfs"), "job durability flushed the whole filesystem"
    want_files = {str(dst / p.relative_to(src)) for p in files}
    assert want_files <= _paths(calls, "sync_file_range"), "writeback was not started as files completed"
    # Every directory the job created, and the ones it created them in (the job's root was made with its
    # parent "new": the export's root holds the new entry).
    ancestors = {str(dst.parent), str(dst.parent.parent)}
    want_dirs = {str(d) for d in dst.rglob("*") if d.is_dir()} | {str(dst)} | ancestors
    fsynced = _paths(calls, "fsync")
    assert ancestors <= fsynced, sorted(ancestors - fsynced)
    if journaled(dst):  # XFS, ext4 with a journal: each file's data waited for, then one journal commit through
        # the root that covers every file's and directory's metadata
        assert want_files <= _paths(calls, "wait")
        last_wait = max(i for i, (call, _) in enumerate(calls) if call == "wait")
        assert ("fsync", str(dst)) in calls[last_wait:], "no journal commit after the last data wait"
        assert fsynced <= want_dirs, sorted(fsynced - want_dirs)[:5]
    else:
        assert want_dirs <= fsynced, sorted(want_dirs - fsynced)
        assert want_files <= fsynced, sorted(want_files - fsynced)[:5]
        assert fsynced <= want_files | want_dirs, sorted(fsynced - want_files - want_dirs)[:5]

    # A re-sync that changes one file flushes that file and the directories it changed, nothing more
    # (directories changed within CTIME_MARGIN_NS before a job started count as changed by it: wait that out).
    time.sleep(CTIME_MARGIN_NS / 1e9)
    changed = files[7]
    write_file(changed, b"new content")
    trace = Strace(agent_b.proc.pid, tmp_path / "strace2.out")
    try:
        rc, out, err = cluster.ctl("replicate", f"hostA:{src}", f"hostB:{dst}", "--json")
    finally:
        calls = trace.stop()
    assert rc == 0, err
    assert json.loads(out)["progress"]["files_done"] == 1
    target = dst / changed.relative_to(src)
    flushed = _paths(calls, "fsync") | _paths(calls, "wait")
    assert flushed == ({str(target), str(dst)} if journaled(dst) else {str(target), str(target.parent)}), calls
    assert not _paths(calls, "syncfs")

    # The agent dies the moment the job is done: what it reported is there, complete, no temp left.
    write_file(files[3], b"changed again")
    rc, out, err = cluster.ctl("replicate", f"hostA:{src}", f"hostB:{dst}", "--json")
    agent_b.send_signal(signal.SIGKILL)
    assert rc == 0, err
    agent_b.proc.wait(10)
    assert not diff_trees(snapshot(src), snapshot(dst))
    assert not [p for p in dst.rglob(".zc.*")], "a temp file outlived a job reported done"
    agent_b.start()
    cluster.wait_online("hostB")
