"""What one timed run records, and the probes behind it: /proc/PID/stat CPU, VmHWM, rusage, machine facts.

/proc/PID/stat utime+stime cover every thread of the process (so an agent's sender and receiver threads
count); cutime+cstime grow only when the process *reaps* a child, which is how the rsync daemon's
per-connection children are charged.
"""

from __future__ import annotations

import hashlib
import os
import platform
import resource
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    """One run of one tool on one workload. CPU is seconds (user+sys); None where a side does not exist."""

    workload: str
    tool: str
    round: int  # -1 = warm-up (discarded), -2 = untimed preparation sync
    wall: float
    ok: bool = True
    note: str = ""
    cpu_send: float | None = None  # local tools: the whole tool
    cpu_recv: float | None = None
    cpu_client: float | None = None  # zc-ctl's own CPU (zcrepl only)
    wire_bytes: int | None = None
    job_seconds: float | None = None  # zcrepl: the attempt's ended_at - started_at, as the controller records it
    submit_to_done: float | None = None  # zcrepl: job finished_at - created_at
    extra: dict[str, Any] = field(default_factory=dict)


def proc_cpu(pid: int) -> tuple[float, float]:
    """(own utime+stime, reaped children's cutime+cstime) in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rindex(b")") + 2:].split()  # the command name may hold spaces and parens
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime) / CLK_TCK, (cutime + cstime) / CLK_TCK


def vm_hwm(pid: int) -> int:
    """Peak resident set size of ``pid`` since it started, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy, as CPUs x wall clock minus idle and iowait (a constant
    offset, cancelled in deltas). Its change over a run, minus the tool's own CPU, shows work that was not
    ours: other processes, and kernel threads such as writeback.

    Not the sum of /proc/stat's user, system, irq... fields: those are tick samples and miss short bursts on
    this tickless guest (scale.py measured 0.12 cores that way against 0.31 cores of two processes' precise
    runtime), while idle time is accounted exactly. Wall time is the monotonic clock, so an NTP step during a
    run cannot show up as busy time.
    """
    with open("/proc/stat", "rb") as f:
        lines = f.read().splitlines()
    ticks = [int(x) for x in lines[0].split()[1:]]
    # Online CPUs as /proc/stat counts them (its "cpuN" lines), which is what its idle total covers.
    cpus = sum(1 for line in lines[1:] if line.startswith(b"cpu")) or os.cpu_count() or 1
    return cpus * time.monotonic() - (ticks[3] + ticks[4]) / CLK_TCK  # fields: user nice system idle iowait


def cpu_by_process() -> dict[int, tuple[str, float]]:
    """pid -> (name, CPU seconds incl. reaped children) for every process now alive but this one. Diffing
    two snapshots names who used the machine during a run (kernel threads such as kworker/jbd2 too)."""
    out: dict[int, tuple[str, float]] = {}
    me = os.getpid()
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue  # exited meanwhile
        name = data[data.index(b"(") + 1:data.rindex(b")")].decode(errors="replace")
        fields = data[data.rindex(b")") + 2:].split()
        if fields[1] == b"2" or d == "2":  # children of kthreadd: kernel threads, bracketed as ps shows them
            name = f"[{name}]"
        out[int(d)] = (name, sum(int(x) for x in fields[11:15]) / CLK_TCK)
    return out


def top_cpu(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], n: int = 4,
            floor: float = 0.05) -> list[tuple[str, float]]:
    """The ``n`` processes that used the most CPU between two snapshots, as ("name[pid]", seconds).
    Keyed by pid: a kworker's name changes with the work it runs."""
    deltas = [(f"{name}[{pid}]", t - before.get(pid, ("", 0.0))[1]) for pid, (name, t) in after.items()]
    deltas = [(k, round(v, 2)) for k, v in deltas if v >= floor]
    return sorted(deltas, key=lambda kv: -kv[1])[:n]


def children_cpu() -> float:
    """User+sys of every child this process has reaped so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def thread_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_THREAD)
    return r.ru_utime + r.ru_stime


def live_children(pid: int) -> list[int]:
    """Direct children of ``pid`` that are not yet reaped."""
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:  # kernels without CONFIG_PROC_CHILDREN: scan /proc
        kids = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    stat_line = (d / "stat").read_bytes()
                except OSError:
                    continue
                if int(stat_line[stat_line.rindex(b")") + 2:].split()[1]) == pid:
                    kids.append(int(d.name))
        return kids


def wait_reaped(pid: int, timeout: float = 10.0) -> bool:
    """Wait until ``pid`` has reaped all its children, so their CPU shows in its cutime/cstime."""
    deadline = time.monotonic() + timeout
    while live_children(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def _cmd(*argv: str) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def machine_facts(data: Path, repo: Path) -> dict[str, Any]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1]
    commit = _cmd("git", "-C", str(repo), "rev-parse", "--short", "HEAD")
    dirty = bool(_cmd("git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"))
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gib": round(int(mem) / (1 << 20), 1),
        "kernel": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": sys.version.split()[0],
        "rsync": _cmd("rsync", "--version").split("\n", 1)[0],
        "filesystem": _cmd("findmnt", "-n", "-o", "SOURCE,FSTYPE,OPTIONS", "--target", str(data)),
        "zcrepl_commit": commit + ("+dirty" if dirty else ""),
        "worktree_sha": worktree_digest(repo),
        "openssl": ssl.OPENSSL_VERSION,
        "ktls": ktls_state(),
    }


def ktls_state() -> str:
    """Whether --encrypt runs could use kernel TLS here: Python must expose it (3.12+ OP_ENABLE_KTLS; sendfile
    needs SSLSocket.uses_ktls_for_send) and the kernel must have its tls module loaded (/proc/net/tls_stat)."""
    python = hasattr(ssl, "OP_ENABLE_KTLS")
    sendfile = hasattr(getattr(ssl, "_ssl", None), "_SSLSocket") and hasattr(ssl._ssl._SSLSocket, "uses_ktls_for_send")
    kernel = os.path.exists("/proc/net/tls_stat")
    if python and sendfile and kernel:
        return "possible (Python exposes kTLS sendfile, the kernel's tls module is loaded)"
    why = [w for w, ok in (("Python lacks OP_ENABLE_KTLS", python), ("Python lacks SSL_sendfile", sendfile),
                           ("no kernel tls module", kernel)) if not ok]
    return "not active: " + ", ".join(why)


def worktree_digest(repo: Path) -> str:
    """Identifies uncommitted source changes (the agents run the editable install, i.e. the working tree):
    sha256 of ``git diff HEAD`` plus untracked files of the packages, without writing to the repository."""
    h = hashlib.sha256(_cmd("git", "-C", str(repo), "diff", "HEAD", "--", "agent", "controller", "core",
                            "proto").encode())
    untracked = _cmd("git", "-C", str(repo), "ls-files", "--others", "--exclude-standard", "--", "agent",
                     "controller", "core", "proto").split()
    for name in sorted(untracked):
        h.update(name.encode() + b"\0" + (repo / name).read_bytes())
    return h.hexdigest()[:12]
