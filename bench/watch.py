"""Continuous replication latency: zcrepl watch rules vs lsyncd, on the same changes, on this machine.

    python bench/watch.py [--changes 200] [--interval 0.05] [--burst 10000] [--runs 3] [--rounds 3]
                          [--skip-lsyncd] [--skip-syncthing] [--burst-only] [--floor]
                          [--work DIR [--loop-ext4 SIZE]]

Two measurements per tool:

- **latency**: ``--changes`` 4 KiB file changes, one every ``--interval`` seconds (even: a new file, odd: an
  existing file rewritten in place), each under its own name. Latency is from the moment the writer closed
  the file on the source to the moment the destination's final rename (``IN_MOVED_TO``) of that name is
  seen through inotify (both zcrepl and rsync write a temp file and rename it into place).
- **burst**: ``--burst`` small files created as fast as Python can, in 10 directories; the time from the
  first create until the destination holds all of them, and how long the writer itself took, beside the
  same writer on a tree no rule watches (same file system; issue 11 item 5: at most 1.3x). Each run does
  ``--rounds`` such pairs, the order alternating (unwatched first, then watched first), with a ``sync`` and the
  convergence of the watched copy between any two writers, so neither pays for the other's writeback or
  shipping. Per writer: its wall and CPU seconds (``RUSAGE_THREAD``), and the watching process's CPU seconds
  meanwhile (the sum of its threads' ``/proc/PID/task/*/schedstat``), also from the watched writer's start to
  convergence.

lsyncd runs with its default settings (``default.rsync``: a 15 s delay, up to 1000 events per batch) and,
as a second row, with ``delay = 0``; Syncthing (two instances on loopback, see ``syncthing.py``) with its
default 10 s watch delay and with 1 s, the smallest it takes. Results go to
bench/results/watch-<time>.{md,json}.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import json
import math
import os
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loopfs
from daemons import BIN, Daemon, ZcCluster
from syncthing import Syncthing

_IN_MOVED_TO = 0x80
_IN_CLOSE_WRITE = 0x08
_EVENT = struct.Struct("iIII")
RESULTS = Path(__file__).resolve().parent / "results"


class Arrivals:
    """Names renamed into (or written in) one destination directory, with when inotify reported them."""

    def __init__(self, directory: Path) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.fd = libc.inotify_init1(os.O_CLOEXEC)
        if self.fd < 0 or libc.inotify_add_watch(self.fd, os.fsencode(directory), _IN_MOVED_TO) < 0:
            raise OSError(ctypes.get_errno(), "inotify")
        self.seen: dict[str, float] = {}
        self.cond = threading.Condition()
        self._stop = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self._stop:
            try:
                buf = os.read(self.fd, 1 << 16)
            except OSError:
                return
            now = time.monotonic()
            off = 0
            with self.cond:
                while off < len(buf):
                    _wd, _mask, _cookie, n = _EVENT.unpack_from(buf, off)
                    name = buf[off + _EVENT.size: off + _EVENT.size + n].rstrip(b"\0").decode()
                    off += _EVENT.size + n
                    self.seen.setdefault(name, now)
                self.cond.notify_all()

    def wait(self, names: set[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not names <= self.seen.keys():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
        return True

    def close(self) -> None:
        self._stop = True
        os.close(self.fd)


def _write(path: Path, data: bytes) -> float:
    with open(path, "wb") as f:
        f.write(data)
    return time.monotonic()


def latency_run(src: Path, dst: Path, changes: int, interval: float, timeout: float) -> dict[str, Any]:
    """The stream of 4 KiB changes; returns per-change latencies (ms) and how many never arrived."""
    names = [f"lat-{i:04d}" for i in range(changes)]
    for n in names[1::2]:  # the files the odd changes rewrite exist (and have arrived) beforehand
        (src / n).write_bytes(b"old" * 100)
    _wait_files(dst, set(names[1::2]), 120)
    arr = Arrivals(dst)
    written: dict[str, float] = {}
    try:
        t0 = time.monotonic()
        for i, n in enumerate(names):
            target = t0 + i * interval
            delay = target - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            written[n] = _write(src / n, os.urandom(4096))
        arr.wait(set(names), timeout)
    finally:
        arr.close()
    lat = sorted((arr.seen[n] - written[n]) * 1000 for n in names if n in arr.seen)
    return {"latencies_ms": lat, "lost": changes - len(lat)}


def write_burst(src: Path, files: int, dirs: int = 10, prefix: str = "burst") -> tuple[float, float]:
    """The writer: ``files`` small files in ``dirs`` new directories, as fast as Python goes; its wall and CPU
    seconds (this thread's user + system time)."""
    c0 = _thread_cpu()
    t0 = time.monotonic()
    for d in range(dirs):
        (src / f"{prefix}{d}").mkdir()
        for i in range(files // dirs):
            (src / f"{prefix}{d}" / f"f{i:05d}").write_bytes(b"%d %d\n" % (d, i))
    return time.monotonic() - t0, _thread_cpu() - c0


def _thread_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_THREAD)
    return ru.ru_utime + ru.ru_stime


def process_cpu(pid: int | None) -> float:
    """CPU seconds of every live thread of ``pid`` (schedstat: nanoseconds, where stat's ticks are 10 ms)."""
    if pid is None:
        return 0.0
    total = 0
    with contextlib.suppress(FileNotFoundError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError), \
                    open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
    return total / 1e9


def settle(pids: list[int], timeout: float = 15.0) -> None:
    """``sync``, then wait until ``pids`` use under 2% of a core for 0.5 s: the previous burst's shipping,
    the destination's flush of it and their logs are over before the next writer starts."""
    os.sync()
    deadline = time.monotonic() + timeout
    before = sum(process_cpu(p) for p in pids)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = sum(process_cpu(p) for p in pids)
        if now - before < 0.01:
            return
        before = now


def _arrived(dst: Path, prefix: str, dirs: int) -> int:
    n = 0
    for d in range(dirs):
        with contextlib.suppress(FileNotFoundError):
            n += sum(1 for e in os.scandir(dst / f"{prefix}{d}") if not e.name.startswith("."))
    return n


def burst_round(src: Path, dst: Path, files: int, timeout: float, unwatched: Path, prefix: str, *,
                watched_first: bool, pids: list[int], converge: bool = True) -> dict[str, Any]:
    """One pair of writers (unwatched and watched, in the given order), each after the previous watched burst
    converged and the tool settled (:func:`settle`). ``pids[0]`` is the watching process."""
    dirs = 10
    out: dict[str, Any] = {}
    pid = pids[0] if pids else None

    def unwatched_writer() -> None:
        settle(pids)
        a0 = process_cpu(pid)
        out["unwatched_write_s"], out["unwatched_writer_cpu_s"] = write_burst(unwatched, files, dirs, prefix)
        out["unwatched_agent_cpu_s"] = process_cpu(pid) - a0

    def watched_writer() -> None:
        settle(pids)
        a0 = process_cpu(pid)
        t0 = time.monotonic()
        out["write_s"], out["writer_cpu_s"] = write_burst(src, files, dirs, prefix)
        out["agent_cpu_s"] = process_cpu(pid) - a0
        out["converge_s"] = None
        if not converge:
            return
        deadline = t0 + timeout
        while (n := _arrived(dst, prefix, dirs)) < files:
            if time.monotonic() > deadline:
                out["arrived"] = n
                break
            time.sleep(0.02)
        else:
            out["converge_s"] = time.monotonic() - t0
        out["agent_cpu_to_converge_s"] = process_cpu(pid) - a0

    for writer in ((watched_writer, unwatched_writer) if watched_first else (unwatched_writer, watched_writer)):
        writer()
    return out


def _wait_files(dst: Path, names: set[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not names <= {e.name for e in os.scandir(dst)}:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(names)} setup files never reached {dst}")
        time.sleep(0.05)


# -- tools ----------------------------------------------------------------------------------------------
class Zcrepl:
    name = "zcrepl (window 50 ms)"

    def __init__(self, run: Path, src: Path, dst: Path) -> None:
        self.cluster = ZcCluster(run, src.parent, dst.parent)
        self.src, self.dst = src, dst

    def start(self) -> None:
        self.cluster.start_controller()
        self.cluster.start_agents()
        p = subprocess.run([str(BIN / "zc-ctl"), "--controller", self.cluster.addr, "replicate", "--watch",
                            f"hostA:{self.src}", f"hostB:{self.dst}", "--json"], capture_output=True, timeout=120)
        if p.returncode != 0:
            raise RuntimeError(f"zc-ctl replicate --watch failed: {p.stderr.decode()}")
        time.sleep(1.5)  # past the replay margin after the first reconciliation

    @property
    def pid(self) -> int:
        return self.cluster.pid("hostA")

    @property
    def pids(self) -> list[int]:
        return [self.cluster.pid("hostA"), self.cluster.pid("hostB"), self.cluster.controller.pid]

    def stop(self) -> None:
        self.cluster.stop()


_FLOOR = """
import ctypes, ctypes.util, os, struct, sys
libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
fd = libc.inotify_init1(os.O_CLOEXEC)
mask = 0x2 | 0x4 | 0x8 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400  # what watchdog's mask holds here
wds = {}
def add(path):
    wd = libc.inotify_add_watch(fd, path, mask)
    if wd >= 0:
        wds[wd] = path
add(os.fsencode(sys.argv[1]))
open(sys.argv[2], "w").write("{}")  # the ready file Daemon waits for
event = struct.Struct("iIII")
while True:
    buf = os.read(fd, 1 << 16)
    off = 0
    while off < len(buf):  # only to follow new directories, as any recursive watcher must
        wd, m, _cookie, n = event.unpack_from(buf, off)
        if m & 0x40000100 == 0x40000100 and wd in wds:  # IN_ISDIR | IN_CREATE
            add(wds[wd] + b"/" + buf[off + 16: off + 16 + n].rstrip(b"\\0"))
        off += 16 + n
"""


class InotifyFloor:
    """Not a tool: the floor under any inotify-based one. A process that watches the tree (and each new directory)
    with inotify and reads the events, doing nothing else with them; the writer then pays only the kernel's
    side of inotify (queueing each event in its own system calls, waking the reader) and the reader's CPU."""

    name = "floor: inotify reader that does nothing"

    def __init__(self, run: Path, src: Path, dst: Path) -> None:
        self.daemon = Daemon("inotify-floor", [sys.executable, "-c", _FLOOR, str(src), str(run / "floor.ready")],
                             run / "floor.log", run / "floor.ready")

    def start(self) -> None:
        self.daemon.start()

    @property
    def pid(self) -> int:
        return self.daemon.pid

    def stop(self) -> None:
        self.daemon.stop()


class Lsyncd:
    def __init__(self, run: Path, src: Path, dst: Path, delay: float | None) -> None:
        self.name = "lsyncd (default: delay 15 s)" if delay is None else f"lsyncd (delay = {delay:g})"
        conf = run / f"lsyncd-{delay}.lua"
        extra = "" if delay is None else f", delay = {delay}"
        conf.write_text(f'settings {{ nodaemon = true, logfile = "{run}/lsyncd.log" }}\n'
                        f'sync {{ default.rsync, source = "{src}", target = "{dst}"{extra} }}\n')
        self.daemon = Daemon("lsyncd", ["lsyncd", str(conf)], run / "lsyncd.out")
        self.src, self.dst = src, dst

    def start(self) -> None:
        (self.src / "lsyncd-ready").write_bytes(b"x")
        self.daemon.start(ready=lambda: (self.dst / "lsyncd-ready").exists(), timeout=120)

    @property
    def pid(self) -> int:
        return self.daemon.pid

    def stop(self) -> None:
        self.daemon.stop()


def pct(xs: list[float], q: float) -> float:
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))] if xs else float("nan")


def _med(runs: list[dict[str, Any]], key: str) -> float | None:
    xs = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(xs) if xs else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--changes", type=int, default=200)
    ap.add_argument("--interval", type=float, default=0.05, help="seconds between changes")
    ap.add_argument("--burst", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=3, help="tool starts (a fresh cluster or daemon each)")
    ap.add_argument("--rounds", type=int, default=3, help="burst pairs (unwatched, watched) per run")
    ap.add_argument("--skip-lsyncd", action="store_true")
    ap.add_argument("--skip-syncthing", action="store_true")
    ap.add_argument("--burst-only", action="store_true", help="skip the latency measurement")
    ap.add_argument("--floor", action="store_true",
                    help="also time the burst writer under an inotify reader that does nothing (burst only)")
    ap.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temp dir)")
    ap.add_argument("--loop-ext4", metavar="SIZE", default="",
                    help="mount a journaled ext4 image (WORK.ext4.img, sparse, kept) over --work for the run: this "
                         "VM's root ext4 has no journal and creates small files 3-20x slower after deletions "
                         "(loopfs.py); needs root")
    args = ap.parse_args(argv)
    if not args.skip_lsyncd and shutil.which("lsyncd") is None:
        print("bench/watch: lsyncd is not installed (apt-get install lsyncd) or pass --skip-lsyncd", file=sys.stderr)
        return 2
    if not args.skip_syncthing and shutil.which("syncthing") is None:
        print("bench/watch: syncthing is not installed (apt-get install syncthing) or pass --skip-syncthing",
              file=sys.stderr)
        return 2
    if args.loop_ext4 and args.work is None:
        print("bench/watch: --loop-ext4 needs --work DIR (the mount point)", file=sys.stderr)
        return 2
    tools: list[Any] = [("zcrepl", None)]
    if args.floor:
        tools.append(("floor", None))
    if not args.skip_lsyncd:
        tools += [("lsyncd", None), ("lsyncd", 0)]
    if not args.skip_syncthing:
        tools += [("syncthing", None), ("syncthing", 1)]
    mount = (loopfs.mounted(args.work, loopfs.parse_size(args.loop_ext4)) if args.loop_ext4
             else contextlib.nullcontext(args.work))
    with mount:
        rows = _measure(args, tools)
    _report(args, rows)
    return 0


def _measure(args: argparse.Namespace, tools: list[Any]) -> list[dict[str, Any]]:
    base = Path(tempfile.mkdtemp(prefix="zc-watch-", dir=args.work))
    rows: list[dict[str, Any]] = []
    try:
        for kind, delay in tools:
            lats: list[dict[str, Any]] = []
            bursts: list[dict[str, Any]] = []
            name = ""
            for r in range(args.runs):
                run = base / f"{kind}-{delay}-{r}"
                src, dst = run / "src" / "tree", run / "dst" / "tree"
                src.mkdir(parents=True)
                dst.mkdir(parents=True)
                tool = (Zcrepl(run, src, dst) if kind == "zcrepl" else Lsyncd(run, src, dst, delay) if kind == "lsyncd"
                        else InotifyFloor(run, src, dst) if kind == "floor" else Syncthing(run, src, dst, delay))
                name = tool.name
                try:
                    tool.start()
                except BaseException:
                    tool.stop()  # what did start (zcrepl's controller, say) must not outlive the benchmark
                    raise
                try:
                    lat_timeout = 60.0 if kind == "zcrepl" or delay == 0 else 120.0
                    changes = 0 if args.burst_only or kind == "floor" else args.changes
                    lat = latency_run(src, dst, changes, args.interval, lat_timeout)
                    (run / "unwatched").mkdir()
                    for k in range(args.rounds):
                        b = burst_round(src, dst, args.burst, 300.0, run / "unwatched", f"r{k}-",
                                        watched_first=k % 2 == 1, pids=_pids(tool),
                                        converge=kind != "floor")
                        bursts.append(b)
                        _print_round(f"{name} run {r + 1} round {k + 1}", b)
                finally:
                    tool.stop()
                    shutil.rmtree(run, ignore_errors=True)  # 30,000 inodes a round: the loop image's run out
                lats.append(lat)
                ls = lat["latencies_ms"]
                print(f"{name} run {r + 1}: p50 {pct(ls, 0.5):.1f} ms, p99 {pct(ls, 0.99):.1f} ms, "
                      f"lost {lat['lost']}", flush=True)
            ratios = [b["write_s"] / b["unwatched_write_s"] for b in bursts]
            row: dict[str, Any] = {
                "tool": name, "p50_ms": statistics.median(pct(x["latencies_ms"], 0.5) for x in lats),
                "p99_ms": statistics.median(pct(x["latencies_ms"], 0.99) for x in lats),
                "max_ms": max(max(x["latencies_ms"] or [0]) for x in lats), "lost": sum(x["lost"] for x in lats),
                "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                "latency": lats, "bursts": bursts}
            for key in ("converge_s", "write_s", "unwatched_write_s", "writer_cpu_s", "unwatched_writer_cpu_s",
                        "agent_cpu_s", "unwatched_agent_cpu_s", "agent_cpu_to_converge_s"):
                row[key] = _med(bursts, key)
            rows.append(row)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return rows


def _pids(tool: Any) -> list[int]:
    pids = getattr(tool, "pids", None)
    if pids is not None:
        return list(pids)
    pid = getattr(tool, "pid", None)
    return [] if pid is None else [pid]


def _print_round(what: str, b: dict[str, Any]) -> None:
    conv = "-" if b["converge_s"] is None else f"{b['converge_s']:.2f} s"
    print(f"{what}: writer {b['write_s']:.3f} s (cpu {b['writer_cpu_s']:.3f}) vs unwatched "
          f"{b['unwatched_write_s']:.3f} s (cpu {b['unwatched_writer_cpu_s']:.3f}) = "
          f"{b['write_s'] / b['unwatched_write_s']:.2f}x; watcher cpu {b['agent_cpu_s']:.3f} s during, "
          f"{b.get('agent_cpu_to_converge_s', 0.0):.3f} s to convergence ({conv})", flush=True)


def _s(x: float | None, fmt: str = ".2f") -> str:
    return "-" if x is None else f"{x:{fmt}}"


def _report(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    where = (f"a journaled ext4 ({args.loop_ext4} loop image)" if args.loop_ext4
             else str(args.work) if args.work else "the default temp dir")
    lines = [f"# watch latency, {stamp}", "",
             f"{args.changes} changes of 4 KiB, one every {args.interval * 1000:.0f} ms; burst of {args.burst} "
             f"files on {where}; {args.runs} runs of {args.rounds} burst pairs (order alternating), medians.", "",
             "| tool | p50 latency | p99 latency | max | lost | burst converged | burst writer (unwatched) "
             "| writer CPU s (unwatched) | watcher CPU s: during writer / to convergence |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        burst = (f"{row['converge_s']:.2f} s" if row["converge_s"] is not None
                 else "-" if row["tool"].startswith("floor") else "did not converge")
        writer = (f"{row['write_s']:.2f} s ({row['unwatched_write_s']:.2f} s, {row['ratio']:.2f}x, "
                  f"{row['ratio_min']:.2f}-{row['ratio_max']:.2f})")
        measured = not math.isnan(row["p50_ms"])  # nan: no latency part (--burst-only, the floor row)
        lat = (f"{row['p50_ms']:.1f} ms | {row['p99_ms']:.1f} ms | {row['max_ms']:.0f} ms | {row['lost']}" if measured
               else "- | - | - | -")
        lines.append(f"| {row['tool']} | {lat} | {burst} | {writer} | {_s(row['writer_cpu_s'])} "
                     f"({_s(row['unwatched_writer_cpu_s'])}) | {_s(row['agent_cpu_s'])} / "
                     f"{_s(row['agent_cpu_to_converge_s'])} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"watch-{stamp}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"watch-{stamp}.json").write_text(json.dumps(rows, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
