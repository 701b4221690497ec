#!/usr/bin/env python3
"""Start the network test bed by hand: a controller and agents, each on a host of its own (tests/netbed.py).

    sudo .venv/bin/python scripts/netbed.py up --dir /tmp/bed --hosts hostA,hostB,hostC --shape hostA>hostC=50
    sudo .venv/bin/python scripts/netbed.py cut hostA hostB --dir /tmp/bed     # packets between them vanish
    sudo .venv/bin/python scripts/netbed.py heal hostA hostB --dir /tmp/bed
    sudo .venv/bin/python scripts/netbed.py shape hostB hostC 500 --dir /tmp/bed   # Mbit/s
    sudo .venv/bin/python scripts/netbed.py down hostB --dir /tmp/bed          # its interface down (fast failure)
    sudo .venv/bin/python scripts/netbed.py up-link hostB --dir /tmp/bed
    sudo .venv/bin/python scripts/netbed.py clean                               # beds of dead processes

``up`` prints the addresses, the environment for zc-ctl and the logs, then runs until Ctrl-C (or SIGTERM) and
removes everything it made. Each agent exports DIR/<host>; the namespaces share the filesystem, so the trees
can be made and compared from the shell. The daemons run with the test suite's settings (relaxed load policy,
fast retries, debug logs in DIR/*.log).
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from netbed import NetBed, available, sweep_stale
from zchelpers import Cluster

STATE = "bed.json"


def _up(args: argparse.Namespace) -> int:
    base = Path(args.dir).resolve()
    base.mkdir(parents=True, exist_ok=True)
    hosts = [h for h in args.hosts.split(",") if h]
    stop = threading.Event()

    def on_signal(_sig: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with NetBed() as bed:
        cluster = Cluster(base, bed=bed)
        try:
            cluster.controller.start()
            for h in hosts:
                cluster.add_agent(h, base / h).start()
            cluster.wait_online(*hosts)
            for spec in args.shape:
                link, _, mbit = spec.partition("=")
                src, _, dst = link.partition(">")
                bed.shape(src, dst, float(mbit))
            (base / STATE).write_text(json.dumps(bed.describe(), indent=1))
            env = cluster.pki.env()
            print(f"bed {bed.id} on {bed.subnet} (bridge {bed.bridge}); you are {bed.ip('operator')}")
            for name, h in bed.hosts.items():
                if h.ns:
                    print(f"  {name:<12} {h.ip:<15} ip netns exec {h.ns} ...   log {base / (name + '.log')}")
            print("zc-ctl from this host:")
            print("  export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
                  + f" ZC_CONTROLLER={cluster.controller_addr}")
            print(f"  zc-ctl agents; zc-ctl replicate {hosts[0]}:{base / hosts[0]}/src "
                  f"{hosts[-1]}:{base / hosts[-1]}/copy")
            print(f"links: {sys.argv[0]} cut|heal A B, shape A B MBIT, down|up-link HOST --dir {base}")
            print("Ctrl-C stops the daemons and removes the bed.", flush=True)
            stop.wait()
        finally:
            cluster.close()
            (base / STATE).unlink(missing_ok=True)
    return 0


def _attached(args: argparse.Namespace) -> NetBed:
    path = Path(args.dir) / STATE
    try:
        return NetBed.attach(json.loads(path.read_text()))
    except FileNotFoundError:
        raise SystemExit(f"{path} does not exist: start a bed with '{sys.argv[0]} up --dir {args.dir}' first") from None


def _link(args: argparse.Namespace) -> int:
    bed = _attached(args)
    for name in (args.a, getattr(args, "b", None)):
        if name is not None and name not in bed.hosts:
            raise SystemExit(f"no host {name!r} on this bed; hosts: {', '.join(bed.hosts)}")
    if args.cmd == "cut":
        bed.cut(args.a, args.b)
    elif args.cmd == "heal":
        bed.heal(args.a, args.b)
    elif args.cmd == "shape":
        bed.shape(args.a, args.b, args.mbit)
        (Path(args.dir) / STATE).write_text(json.dumps(bed.describe(), indent=1))
    elif args.cmd == "down":
        bed.link_down(args.a)
    else:
        bed.link_up(args.a)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start a bed with a controller and agents; Ctrl-C removes it")
    up.add_argument("--dir", default="/tmp/zcrepl-bed", help="logs, certificates, exports (DIR/<host>)")
    up.add_argument("--hosts", default="hostA,hostB,hostC", help="agents, comma-separated")
    up.add_argument("--shape", action="append", default=[], metavar="SRC>DST=MBIT", help="shape a link (repeatable)")
    for cmd in ("cut", "heal", "shape"):
        sp = sub.add_parser(cmd)
        sp.add_argument("a")
        sp.add_argument("b")
        if cmd == "shape":
            sp.add_argument("mbit", type=float)
        sp.add_argument("--dir", default="/tmp/zcrepl-bed")
    for cmd in ("down", "up-link"):
        sp = sub.add_parser(cmd)
        sp.add_argument("a")
        sp.add_argument("--dir", default="/tmp/zcrepl-bed")
    sub.add_parser("clean", help="remove namespaces and links of beds whose process is gone")
    args = p.parse_args(argv)
    problem = available()
    if problem:
        print(problem, file=sys.stderr)
        return 2
    if args.cmd == "clean":
        for name in sweep_stale():
            print("removed", name)
        return 0
    if args.cmd == "up":
        return _up(args)
    return _link(args)


if __name__ == "__main__":
    sys.exit(main())
