"""zcrepl benchmark: zcrepl end to end against the raw sendfile limit, rsync to a daemon, rsync local and
cp -a, interleaved round by round on generated workloads W1-W6. See bench/README.md.

Run it as a script (bench/ is not a package; its directory is on sys.path that way):
    /work/venv/bin/python bench/run.py --workloads W2,W5,W1 --runs 3
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import loopfs
import report
from daemons import RsyncDaemon, ZcCluster
from measure import Run, cpu_by_process, machine_busy, machine_facts, proc_cpu, top_cpu, vm_hwm
from rich.console import Console
from tools import Context, Tool, all_tools
from workloads import Workload, _h, ensure, specs, tree_summary

REPO = Path(__file__).resolve().parent.parent
ALL = ("W1", "W2", "W3", "W4", "W5", "W6", "W8", "W8D", "W9", "R1", "R2", "R3", "R4")
_libc = ctypes.CDLL(None, use_errno=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", default="W1,W2,W3,W4,W5",
                   help="comma-separated subset of W1..W6, W8, W8D, W9, R1..R4, run in this order (default W1-W5; "
                        "W6 is big)")
    p.add_argument("--runs", type=int, default=5, help="timed rounds per workload (default 5)")
    p.add_argument("--data", type=Path, default=Path("/tmp/zcbench"),
                   help="where workloads and destinations live, never inside the repo (default /tmp/zcbench)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: small sizes (under DATA/quick), 1 round, no warm-up; --runs is ignored")
    p.add_argument("--streams", type=int, default=0, help="pass --streams N to zc-ctl replicate")
    p.add_argument("--tools", default="",
                   help="comma-separated subset of: zc-none,zc-job,zc-none-tls,zc-job-tls,raw,rsyncd,rsync,cp")
    p.add_argument("--encrypt", action="store_true",
                   help="also run zcrepl with --encrypt (TLS 1.3 data plane): rows zcrepl none/job --encrypt")
    p.add_argument("--no-warmup", action="store_true", help="skip the discarded warm-up round")
    p.add_argument("--no-sync", action="store_true",
                   help="skip the untimed sync(2) before each run (then a run may pay for writing back the dirty "
                        "pages of earlier runs: zcrepl's --durability job syncs the whole filesystem)")
    p.add_argument("--keep", action="store_true", help="keep each workload's destinations afterwards")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="where tables are saved")
    p.add_argument("--loop-ext4", metavar="SIZE", default="",
                   help="run on a journaled ext4 image (DATA.ext4.img, sparse, kept) mounted over DATA for the run, "
                        "e.g. 24G: this VM's root ext4 has no journal, and its inode allocator makes creating files "
                        "after a deletion 3-20x slower for every tool (loopfs.py); needs root")
    args = p.parse_args(argv)
    args.names = [n.strip().upper() for n in args.workloads.split(",") if n.strip()]
    bad = [n for n in args.names if n not in ALL]
    if bad or not args.names:
        p.error(f"unknown workload(s) {bad}; choose from {','.join(ALL)}")
    if args.quick:  # one round; it is also the one whose copies are checked
        args.runs, args.no_warmup = 1, True
    if args.runs < 1:
        p.error("--runs must be at least 1")
    args.data = args.data.resolve() / ("quick" if args.quick else "")
    if args.data.is_relative_to(REPO):
        p.error(f"--data {args.data} is inside the repository; pick a directory outside {REPO}")
    return args


def _sigterm(_sig: int, _frame: Any) -> None:
    raise KeyboardInterrupt  # so the finally blocks stop the daemons


class Bench:
    """One benchmark run: generated sources, the daemons, every tool, and the runs collected so far."""

    def __init__(self, args: argparse.Namespace, console: Console) -> None:
        self.args, self.console = args, console
        self.src_root, self.dst_root = args.data / "src", args.data / "dst"
        self.run_dir = args.data / "run"
        self.workloads = specs(args.quick)
        self.summaries: dict[str, dict[str, Any]] = {}  # source dir -> summary
        self.runs: list[Run] = []
        self.rss: dict[str, dict[str, int]] = {}
        self.idle: dict[str, dict[str, float]] = {}
        self.notes: list[str] = []
        self.own_pids: set[int] = set()  # our daemons: their CPU is accounted, not noise

    def generate(self) -> None:
        wanted = {self.workloads[n].source for n in self.args.names}
        if "W4" in self.args.names:
            wanted.add("W1")  # W4's destination starts as W1's file
        for name in ALL:
            w = self.workloads[name]
            if w.gen and w.source in wanted:
                t0 = time.monotonic()
                self.summaries[w.source] = ensure(w, self.src_root, self.args.data / "markers", self.console.print)
                if time.monotonic() - t0 > 1:
                    self.console.print(f"  {name} ready in {time.monotonic() - t0:.1f}s")

    def run(self) -> None:
        subprocess.run(["rm", "-rf", str(self.run_dir)], check=True)
        self.run_dir.mkdir(parents=True)
        cluster = ZcCluster(self.run_dir, self.src_root, self.dst_root)
        rsyncd = RsyncDaemon(self.run_dir, self.dst_root / "rsyncd")
        ctx = Context(self.src_root, self.dst_root, cluster, rsyncd, self.args.streams)
        keys = {k.strip() for k in self.args.tools.split(",") if k.strip()}
        self.tools = [t for t in all_tools(ctx, self.args.encrypt or any(k.endswith("-tls") for k in keys))
                      if not keys or t.key in keys]
        try:
            cluster.start_controller()
            rsyncd.start()
            self.own_pids |= {cluster.controller.pid, rsyncd.pid}
            for name in self.args.names:
                self.workload(self.workloads[name], cluster)
        finally:
            cluster.stop()
            rsyncd.stop()

    def workload(self, w: Workload, cluster: ZcCluster) -> None:
        tools = [t for t in self.tools if t.supports(w)]
        self.console.print(f"[bold]{w.name}[/]: {w.title} ({w.mode}); tools: {', '.join(t.label for t in tools)}")
        cluster.start_agents()
        self.own_pids |= {cluster.pid("hostA"), cluster.pid("hostB")}
        try:
            self._measure_idle(w, cluster, 0.5 if self.args.quick else 2.0)
            if w.mode == "nochange":  # every destination starts identical to the source
                for t in tools:
                    t.clear(w)
                    self._one(w, t, -2)
                os.sync()
            first = 0 if self.args.no_warmup else -1
            for rnd in range(first, self.args.runs):
                for t in tools:
                    t.prepare(w)
                    if not self.args.no_sync:
                        os.sync()  # no run pays for the writeback of another's (or its own restore's) dirty pages
                    dirt = self._dirty(w.dirty) if w.dirty else None
                    try:
                        self._one(w, t, rnd, verify=rnd == first)
                        if dirt is not None:
                            self.runs[-1].extra["syncfs_after"] = self._syncfs_seconds()
                    finally:
                        if dirt is not None:
                            dirt.wait()
                            (self.dst_root / ".dirt").unlink(missing_ok=True)
            self.rss[w.name] = {n: vm_hwm(cluster.pid(n)) for n in ("hostA", "hostB")}
        finally:
            cluster.stop_agents()
            if not self.args.keep:
                for t in tools:
                    subprocess.run(["rm", "-rf", str(t.dest(w))], check=False)

    def _dirty(self, size: int) -> subprocess.Popen[bytes]:
        """Another process starts writing ``size`` bytes to a file on the destination filesystem, without
        syncing, as the timed run starts; it goes on during the run (2 GiB take ~5 s here: the kernel holds at
        most ~0.9 GB dirty and throttles the writer)."""
        path = self.dst_root / ".dirt"
        self.dst_root.mkdir(parents=True, exist_ok=True)
        return subprocess.Popen(["dd", "if=/dev/zero", f"of={path}", "bs=4M", f"count={size // (4 << 20)}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _syncfs_seconds(self) -> float:
        """How long a syncfs of the destination filesystem takes right after the run: what a job that flushed
        the whole filesystem (zcrepl's `job` durability before issue 11) would have waited for on top."""
        fd = os.open(self.dst_root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            t0 = time.perf_counter()
            if _libc.syncfs(fd) != 0:
                raise OSError(ctypes.get_errno(), "syncfs failed")
            return round(time.perf_counter() - t0, 3)
        finally:
            os.close(fd)

    def _measure_idle(self, w: Workload, cluster: ZcCluster, secs: float) -> None:
        """Agents' CPU while idle (heartbeats, health sampling): the floor under every zcrepl CPU figure."""
        pids = {n: cluster.pid(n) for n in ("hostA", "hostB")}
        before = {n: proc_cpu(p)[0] for n, p in pids.items()}
        time.sleep(secs)
        self.idle[w.name] = {n: round((proc_cpu(p)[0] - before[n]) / secs, 4) for n, p in pids.items()}

    def _one(self, w: Workload, t: Tool, rnd: int, verify: bool = False) -> None:
        procs, busy = cpu_by_process(), machine_busy()
        r = t.run(w)
        r.extra["machine_busy"] = round(machine_busy() - busy, 2)
        r.extra["top_cpu"] = top_cpu(procs, cpu_by_process())  # who else was busy: noise shows up here
        r.round = rnd
        if verify and r.ok:
            problem = self._verify(w, t)
            if problem:
                r.ok, r.note = False, problem
        self.runs.append(r)
        tag = {-2: "sync", -1: "warm-up"}.get(rnd, f"round {rnd + 1}")
        extra = f"  job {r.job_seconds:.3f}s" if r.job_seconds is not None else ""
        extra += f"  machine busy {r.extra['machine_busy']:.2f}s"
        bad = "" if r.ok else f"  [red]FAILED: {r.note}[/]"
        self.console.print(f"  {w.name} {tag:<8} {t.label:<18} {r.wall:8.3f}s{extra}{bad}", markup=True)
        if not r.ok:
            self.notes.append(f"{w.name} {t.label} {tag}: {r.note}")

    def noise_notes(self) -> list[str]:
        """Per workload: CPU that other user processes (not ours, not kernel threads) used during the timed
        runs. Above 5% of the timed wall time the figures are disturbed, and the note says by whom."""
        notes = []
        for name in self.args.names:
            timed = [r for r in self.runs if r.workload == name and r.round >= 0]
            by: dict[str, float] = {}
            for r in timed:
                for proc, secs in r.extra.get("top_cpu", []):
                    pid = int(proc[proc.rindex("[") + 1:-1])
                    if not proc.startswith("[") and pid not in self.own_pids:
                        key = proc[:proc.rindex("[")]
                        by[key] = by.get(key, 0.0) + secs
            total, wall = sum(by.values()), sum(r.wall for r in timed)
            if wall and total > 0.05 * wall:
                top = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(by.items(), key=lambda kv: -kv[1])[:3])
                notes.append(f"{name}: NOISE: other processes used {total:.1f} CPU-s during {wall:.1f}s of timed "
                             f"runs ({top})")
        return notes

    def _verify(self, w: Workload, t: Tool) -> str:
        """Compare the copy with its source (counts, sizes, modes, file mtimes, link targets, samples)."""
        meta = t.key != "raw"
        src = self.src_root / w.source
        want = self.summaries[w.source] if meta else tree_summary(src, meta=False)
        got = tree_summary(t.dest(w), meta=meta)
        if got == want:
            return ""
        diff = {k: (want[k], got[k]) for k in want if want[k] != got.get(k)}
        return f"copy differs from the source: {diff}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.loop_ext4:
        with loopfs.mounted(args.data.parent if args.quick else args.data, loopfs.parse_size(args.loop_ext4)):
            return _main(args, argv)
    return _main(args, argv)


def _main(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    # Piped or logged output keeps the table's full width instead of squeezing it to 80 columns.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 250)
    signal.signal(signal.SIGTERM, _sigterm)
    command = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(["bench/run.py", *argv])
    bench = Bench(args, console)
    interrupted = False
    try:
        bench.generate()
        facts = machine_facts(args.data, REPO)
        bench.run()
    except KeyboardInterrupt:
        interrupted = True
        bench.notes.append("interrupted: partial results")
        facts = machine_facts(args.data, REPO)
    if not bench.runs:
        return 130 if interrupted else 1

    wl: dict[str, dict[str, Any]] = {}
    for name in args.names:
        w = bench.workloads[name]
        s = bench.summaries[w.source]
        wl[name] = {"title": w.title, "mode": w.mode, "source": w.source, "bytes": s["bytes"],
                    "entries": s["entries"], "files": s["files"], "dirs": s["dirs"], "symlinks": s["symlinks"],
                    "empty_dirs": s["empty_dirs"], "gen": w.gen}
    labels = {t.key: (t.label, t.local) for t in bench.tools}
    rows = report.build_rows(bench.runs, wl, labels, bench.rss)
    bench.notes += bench.noise_notes()
    for name in args.names:
        after = sorted(r.extra["syncfs_after"] for r in bench.runs
                       if r.workload == name and r.round >= 0 and "syncfs_after" in r.extra)
        if after:
            bench.notes.append(f"{name}: another process writing {_h(bench.workloads[name].dirty)} (no sync) during "
                               f"each run; a syncfs right after the run took {after[len(after) // 2]:.2f} s (median, "
                               f"{after[0]:.2f}-{after[-1]:.2f}): what a whole-filesystem flush adds")
    for name, idle in bench.idle.items():
        bench.notes.append(f"{name}: idle agent CPU (heartbeats, health sampling) hostA {idle['hostA']:.3f} s/s, "
                           f"hostB {idle['hostB']:.3f} s/s; included in the zcrepl CPU figures")
    meta = {"command": command, "machine": facts, "rounds": args.runs, "warmup": not args.no_warmup,
            "quick": args.quick, "data": str(args.data), "loop_ext4": args.loop_ext4, "streams": args.streams,
            "sync": not args.no_sync,
            "notes": bench.notes, "idle_cpu_per_s": bench.idle, "labels": labels}
    title = f"zcrepl benchmark ({'quick, ' if args.quick else ''}{args.runs} round(s), {facts['date']})"
    report.show(console, rows, title)
    md, js = report.save(args.out, meta, wl, rows, bench.runs, bench.rss)
    console.print(f"saved {md} and {js}")
    if interrupted:
        return 130
    return 1 if any(not r.ok for r in bench.runs) else 0


if __name__ == "__main__":
    sys.exit(main())
