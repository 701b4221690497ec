"""zc-ctl start-up as the operator sees it (issue 11, item 1): the wall time of ``zc-ctl --help``, ``zc-ctl agents``
and a 1-file ``zc-ctl replicate`` against a running controller, beside Python's own start-up and an rsync daemon
copying the same 1-file tree, interleaved round by round; then where the time goes, from ``python -X importtime``.

    python bench/startup.py [--runs 15] [--importtime-runs 7] [--out bench/results]

Each round runs every case once, in order (A B C ... A B C ...); a replicate starts from no destination, removed
and ``sync``-ed untimed before it (like rsync's). Wall time is measured around the process (fork to reaping);
CPU is the child's rusage (user + sys). See bench/README.md, "Start-up benchmark".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from daemons import BIN, RsyncDaemon, ZcCluster
from measure import machine_facts

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
TARGET = 0.15  # seconds, issue 11 item 1
# Cumulative import time of these (as -X importtime reports them, nested under whatever imported them first).
MODULES = ("argparse", "zcrepl.cli.ctl", "zcrepl.cli.ctl_commands", "grpc", "asyncio",
           "zcrepl.proto.controller_pb2", "google.protobuf.descriptor_pool", "zcrepl.core.types", "dataclasses",
           "zcrepl.core.trust", "zcrepl.cli.client", "rich.console", "rich.table", "rich.progress")


def timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float, int]:
    """(wall s, CPU s, exit code) of one process, output discarded."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    return wall, ru.ru_utime + ru.ru_stime, p.returncode


def importtime(args: list[str], runs: int) -> dict[str, Any]:
    """Median over ``runs`` of: the process's total import time and each of MODULES' cumulative time (ms)."""
    per: dict[str, list[float]] = {}
    totals: list[float] = []
    for _ in range(runs):
        p = subprocess.run([sys.executable, "-X", "importtime", "-m", "zcrepl.cli.ctl", *args],
                           capture_output=True, text=True, timeout=120)
        seen: dict[str, float] = {}
        total = 0.0
        for line in p.stderr.splitlines():
            if not line.startswith("import time:") or line.count("|") != 2:
                continue
            _, cum, name = line.split("|")
            if not cum.strip().isdigit():
                continue  # the header
            depth = len(name) - len(name.lstrip())
            name = name.strip()
            if depth == 1:  # top level: imported by the program itself (nested ones are inside these)
                total += int(cum) / 1000
            if name in MODULES:
                seen[name] = int(cum) / 1000
        totals.append(total)
        for m, v in seen.items():
            per.setdefault(m, []).append(v)
    return {"total_ms": round(statistics.median(totals), 1),
            "modules_ms": {m: round(statistics.median(v), 1) for m, v in per.items() if len(v) == runs}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=15, help="timed rounds (default 15)")
    ap.add_argument("--importtime-runs", type=int, default=7, help="-X importtime runs per command (default 7)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="zc-startup-"))
    src_root, dst_root = base / "src", base / "dst"
    one = src_root / "one"
    one.mkdir(parents=True)
    (one / "file.txt").write_bytes(os.urandom(4096))
    cluster = ZcCluster(base, src_root, dst_root)
    rsyncd = RsyncDaemon(base, dst_root / "rsyncd")
    ctl = str(BIN / "zc-ctl")
    rows: dict[str, dict[str, list[float]]] = {}
    imports: dict[str, Any] = {}
    try:
        cluster.start_controller()
        cluster.start_agents()
        rsyncd.start()
        zdst = dst_root / "zc" / "one"
        zdst.parent.mkdir(parents=True, exist_ok=True)

        def clear(path: Path) -> None:
            shutil.rmtree(path, ignore_errors=True)
            os.sync()

        cases: list[tuple[str, list[str], Path | None]] = [
            ("python -c pass", [sys.executable, "-c", "pass"], None),
            ("zc-ctl --help", [ctl, "--help"], None),
            ("zc-ctl agents", [ctl, "--controller", cluster.addr, "agents"], None),
            ("zc-ctl agents --json", [ctl, "--controller", cluster.addr, "agents", "--json"], None),
            ("zc-ctl replicate, 1 file", [ctl, "--controller", cluster.addr, "replicate", f"hostA:{one}",
                                          f"hostB:{zdst}"], zdst),
            ("zc-ctl replicate, 1 file, --durability none",
             [ctl, "--controller", cluster.addr, "replicate", f"hostA:{one}", f"hostB:{zdst}", "--durability",
              "none"], zdst),
            ("rsync -a to the daemon, 1 file", ["rsync", "-a", f"{one}/", rsyncd.url("one")],
             dst_root / "rsyncd" / "one"),
        ]
        for _label, argv_, dest in cases:  # a warm-up round: page cache, the controller's first job
            if dest is not None:
                clear(dest)
            timed(argv_)
        for r in range(args.runs):
            for label, argv_, dest in cases:
                if dest is not None:
                    clear(dest)
                wall, cpu, rc = timed(argv_)
                if rc != 0:
                    print(f"{label}: exit {rc}", file=sys.stderr)
                    return 1
                rows.setdefault(label, {"wall": [], "cpu": []})
                rows[label]["wall"].append(wall)
                rows[label]["cpu"].append(cpu)
            print(f"round {r + 1}/{args.runs} done", flush=True)
        clear(zdst)
        for label, cmd in (("--help", ["--help"]), ("agents", ["--controller", cluster.addr, "agents"]),
                           ("agents --json", ["--controller", cluster.addr, "agents", "--json"]),
                           ("replicate, 1 file", ["--controller", cluster.addr, "replicate", f"hostA:{one}",
                                                  f"hostB:{zdst}", "--durability", "none"])):
            imports[label] = importtime(cmd, args.importtime_runs)
            clear(zdst)
        facts = machine_facts(base, REPO)
    finally:
        rsyncd.stop()
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
    return report(rows, imports, facts, args)


def report(rows: dict[str, dict[str, list[float]]], imports: dict[str, Any], facts: dict[str, Any],
           args: argparse.Namespace) -> int:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    targeted = {"zc-ctl --help", "zc-ctl agents", "zc-ctl replicate, 1 file"}
    lines = [f"# zc-ctl start-up, {facts['date']}", "",
             f"{args.runs} interleaved rounds after a warm-up; {facts['nproc']} CPUs, {facts['kernel']}, Python "
             f"{facts['python']}, commit {facts['zcrepl_commit']}.", "",
             "| command | wall ms median (min-max) | CPU ms median | target | |", "|---|---|---|---|---|"]
    for label, v in rows.items():
        w = sorted(v["wall"])
        med = statistics.median(w)
        verdict = ("pass" if med <= TARGET else "MISS") if label in targeted else ""
        target = f"<= {TARGET * 1000:.0f}" if label in targeted else ""
        lines.append(f"| {label} | {med * 1000:.0f} ({w[0] * 1000:.0f}-{w[-1] * 1000:.0f}) | "
                     f"{statistics.median(v['cpu']) * 1000:.0f} | {target} | {verdict} |")
    lines += ["", f"`python -X importtime -m zcrepl.cli.ctl ...`, medians of {args.importtime_runs} runs "
              "(ms, cumulative: a module's own time plus what it imported first; -X importtime itself adds "
              "overhead, so compare the rows with each other rather than with the wall times):", ""]
    cmds = list(imports)
    lines.append("| module | " + " | ".join(cmds) + " |")
    lines.append("|---|" + "---|" * len(cmds))
    lines.append("| all imports | " + " | ".join(f"{imports[c]['total_ms']:.1f}" for c in cmds) + " |")
    for m in MODULES:
        vals = [imports[c]["modules_ms"].get(m) for c in cmds]
        if any(v is not None for v in vals):
            lines.append(f"| {m} | " + " | ".join("-" if v is None else f"{v:.1f}" for v in vals) + " |")
    args.out.mkdir(parents=True, exist_ok=True)
    md = args.out / f"startup-{stamp}.md"
    md.write_text("\n".join(lines) + "\n")
    (args.out / f"startup-{stamp}.json").write_text(json.dumps(
        {"machine": facts, "runs": args.runs, "rows": rows, "importtime": imports}, indent=1))
    print("\n".join(lines))
    print(f"saved {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
