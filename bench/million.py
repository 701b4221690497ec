"""W7: a million files in 1,000 directories, one run, side by side with the rsync daemon: the first copy and a
no-change re-sync, wall time as the operator sees it (the ``zc-ctl replicate`` / ``rsync`` process), and the
peak RSS (VmHWM) of both agents and the controller, which start fresh for the run.

    .venv/bin/python bench/million.py [--data /tmp/zcw7] [--dirs 1000] [--per-dir 1000] [--durability none]

The tree (files of 0-1 KiB, fixed names, bytes and mtimes) is generated once under DATA/src-DIRSxPER and
reused; destinations are removed before the run. Order: rsync copy, zcrepl copy, rsync no-change, zcrepl
no-change, with ``sync`` before each. The rsync row's RSS is its client's (``wait4``); the daemon forks a
receiver per connection whose peak is not seen from here. Run it with another tree's venv to measure that tree
(``/work/main/.venv/bin/python bench/million.py``): the daemons are the ones next to the interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import loopfs
from daemons import BIN, RsyncDaemon, ZcCluster
from measure import vm_hwm

BASE_MTIME = 1_700_000_000
SEED = 20240607


def generate(root: Path, dirs: int, per: int) -> None:
    """``dirs`` directories of ``per`` files of 0-1 KiB; a marker file beside the tree says it is whole."""
    marker = root.with_suffix(".done")
    if marker.exists() and root.is_dir():
        return
    print(f"generating {dirs * per:,} files in {root} (once) ...", flush=True)
    if root.exists():
        shutil.rmtree(root)
    rng = random.Random(SEED)
    pool = rng.randbytes(1 << 20)
    for d in range(dirs):
        dp = root / f"d{d:04d}"
        dp.mkdir(parents=True)
        dfd = os.open(dp, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for i in range(per):
                n = d * per + i
                size = rng.randint(0, 1024)
                off = rng.randrange(len(pool) - size + 1)
                name = f"f{n:07d}.dat"
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=dfd)
                os.write(fd, pool[off:off + size])
                os.close(fd)
                os.utime(name, ns=(BASE_MTIME + n, BASE_MTIME + n), dir_fd=dfd)
        finally:
            os.close(dfd)
    marker.write_text(json.dumps({"dirs": dirs, "per": per}))


def count_files(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


def timed(argv: list[str]) -> tuple[float, int, bytes, int]:
    """Wall seconds, exit status, stdout, and the process's peak RSS in bytes."""
    os.sync()
    with tempfile.TemporaryFile() as out:
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        return wall, p.returncode, out.read(), usage.ru_maxrss * 1024


def run(args: argparse.Namespace) -> dict[str, Any]:
    data: Path = args.data
    src = data / f"src-{args.dirs}x{args.per_dir}"
    generate(src, args.dirs, args.per_dir)
    run_dir = data / "run"
    for d in (run_dir, data / "zcdst", data / "rsyncdst"):
        if d.exists():
            shutil.rmtree(d)
    run_dir.mkdir(parents=True)
    rsyncd = RsyncDaemon(run_dir, data / "rsyncdst")
    cluster = ZcCluster(run_dir, src, data / "zcdst")
    rows: dict[str, Any] = {"files": args.dirs * args.per_dir, "dirs": args.dirs, "python": sys.executable}
    rsyncd.start()
    try:
        cluster.start_controller()
        cluster.start_agents()
        zc = [str(BIN / "zc-ctl"), "--controller", cluster.addr, "replicate", f"hostA:{src}",
              f"hostB:{data / 'zcdst' / 'w7'}", "--json", "--durability", args.durability]
        rs = ["rsync", "-a", f"{src}/", rsyncd.url("w7")]
        for phase in ("copy", "nochange"):
            wall, rc, out, rss = timed(rs)
            rows[f"rsync_{phase}"] = {"seconds": round(wall, 2), "ok": rc == 0, "client_rss_mib": rss >> 20}
            print(f"rsync {phase}: {wall:.1f} s (exit {rc})", flush=True)
            wall, rc, out, _ = timed(zc)
            job = json.loads(out) if rc == 0 else {}
            rows[f"zc_{phase}"] = {"seconds": round(wall, 2), "ok": rc == 0 and job.get("state") == "done",
                                   "files_done": job.get("progress", {}).get("files_done"),
                                   "error": "" if rc == 0 else out.decode(errors="replace")[-500:]}
            rows[f"rss_after_{phase}_mib"] = {n: vm_hwm(p) >> 20 for n, p in (
                ("hostA", cluster.pid("hostA")), ("hostB", cluster.pid("hostB")),
                ("controller", cluster.controller.pid))}
            print(f"zcrepl {phase}: {wall:.1f} s (exit {rc}); peak RSS MiB {rows[f'rss_after_{phase}_mib']}",
                  flush=True)
        rows["copies_whole"] = count_files(data / "zcdst" / "w7") == count_files(data / "rsyncdst" / "w7") == \
            args.dirs * args.per_dir
    finally:
        cluster.stop()
        rsyncd.stop()
    return rows


def markdown(r: dict[str, Any]) -> str:
    rss = r["rss_after_nochange_mib"]
    lines = [f"W7: {r['files']:,} files in {r['dirs']:,} directories ({r['python']})", "",
             "| run | zcrepl s | rsync daemon s | zcrepl / rsync |", "|---|---|---|---|"]
    for phase in ("copy", "nochange"):
        z, s = r[f"zc_{phase}"]["seconds"], r[f"rsync_{phase}"]["seconds"]
        lines.append(f"| {phase} | {z:.1f} | {s:.1f} | {z / s:.2f}x |")
    lines += ["", f"peak RSS MiB: source agent {rss['hostA']}, destination agent {rss['hostB']}, controller "
                  f"{rss['controller']} (rsync client {r['rsync_copy']['client_rss_mib']}); copies whole: "
                  f"{r['copies_whole']}"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("/tmp/zcw7"), help="tree, destinations and logs (not the repo)")
    p.add_argument("--dirs", type=int, default=1000)
    p.add_argument("--per-dir", type=int, default=1000)
    p.add_argument("--durability", default="none", choices=("none", "job", "file"))
    p.add_argument("--out", type=Path, default=None, help="also save the figures as JSON here")
    p.add_argument("--loop-ext4", metavar="SIZE", default="",
                   help="run on a journaled ext4 image mounted over DATA (see loopfs.py), e.g. 40G; one inode per "
                        "4 KiB, so three copies of a million files fit")
    args = p.parse_args(argv)
    if args.loop_ext4:
        with loopfs.mounted(args.data, loopfs.parse_size(args.loop_ext4), bytes_per_inode=4096):
            r = run(args)
    else:
        r = run(args)
    print(markdown(r))
    if args.out is not None:
        args.out.write_text(json.dumps(r, indent=2))
    ok = all(r[f"{t}_{ph}"]["ok"] for t in ("zc", "rsync") for ph in ("copy", "nochange")) and r["copies_whole"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
