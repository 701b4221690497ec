"""Scale benchmark (issue 5, item 6): one zc-controller with N simulated agents heartbeating every second, and a
scheduling pass over 10,000 queued jobs. Prints target vs measured; see bench/README.md, "Scale benchmark".

Run it as a script from the repository root (bench/ is not a package; its directory is on sys.path that way):
    /work/venv/bin/python bench/scale.py [--agents 1000] [--seconds 30] [--jobs 10000] [--store postgres]

``--store`` is the controller's (issue 15, item 7): SQLite in the run's state dir by default, a postgresql:// URL,
or ``postgres`` for a throwaway server started for the run (bench/stores.py). The scheduling pass is then timed
twice: ``plan()`` alone, and the engine's whole pass with that store (bench/engine_pass.py).

The simulated agents live in ONE separate process (bench/simagents.py, started and stopped here), so the
controller process only does a controller's work; the scheduling scenario is in bench/scenario.py.
"""

from __future__ import annotations

import argparse
import bisect
import gc
import json
import math
import os
import random
import resource
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import engine_pass
import grpc
from daemons import BIN, Daemon
from measure import CLK_TCK, machine_facts, proc_cpu, vm_hwm
from rich.console import Console
from scale_report import ENGINE_PASSES, POLL_EVERY, TARGET_P99_MS, TARGET_PLAN_MS, save, show
from scenario import HOST_KINDS, controller_policy, make_scenario, profile_plan, reason_kind
from simagents import fake_health, vary
from stores import label, store_spec

from zcrepl.controller.registry import Registry, Session
from zcrepl.core.trust import TlsPaths, Trust
from zcrepl.core.types import AgentInfo
from zcrepl.proto import controller_pb2 as cpb
from zcrepl.proto import controller_pb2_grpc
from zcrepl.proto.channels import KEEPALIVE_CLIENT, channel
from zcrepl.proto.convert import health_from_pb

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SETTLE = 3.0  # seconds of steady heartbeats before measuring: registration work is over
POLL_CHANNEL = [*KEEPALIVE_CLIENT, ("grpc.max_receive_message_length", 256 << 20)]


def pct(xs: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted ``xs``; NaN when empty."""
    return xs[max(0, math.ceil(q / 100 * len(xs)) - 1)] if xs else math.nan


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    xs = sorted(s * 1000 for s in seconds)
    return {"n": len(xs), "p50": pct(xs, 50), "p90": pct(xs, 90), "p99": pct(xs, 99), "max": xs[-1] if xs else math.nan}


# -- heartbeat run (benchmark side) ---------------------------------------------------------------
@dataclass
class Probe:
    """CPU counters at one instant: our processes' seconds, the machine's busy seconds, every process's own."""

    wall: float
    cpu: dict[str, float]
    busy: float
    everyone: dict[int, tuple[str, float]]


def own_cpu_by_process() -> dict[int, tuple[str, float]]:
    """pid -> (name, utime+stime) of every user process. Unlike measure.cpu_by_process, reaped children are
    left out: a shell reaping a test run would otherwise charge minutes of CPU to one window."""
    out: dict[int, tuple[str, float]] = {}
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue  # exited meanwhile
        fields = data[data.rindex(b")") + 2:].split()
        if fields[1] != b"2" and d != "2":  # kthreadd and its children are kernel threads
            name = data[data.index(b"(") + 1:data.rindex(b")")].decode(errors="replace")
            out[int(d)] = (name, (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return out


def busy_seconds() -> float:
    """CPU-seconds the machine was not idle, as CPUs x wall clock minus idle and iowait (an offset cancels out in
    deltas). Not /proc/stat's user+system: those are tick samples and miss short bursts on this tickless guest
    (0.12 cores against 0.31 cores of the two processes' precise runtime in a 250-agent run); idle time is exact."""
    with open("/proc/stat", "rb") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    return (os.cpu_count() or 1) * time.time() - (ticks[3] + ticks[4]) / CLK_TCK


def probe(pids: dict[str, int]) -> Probe:
    cpu = {name: proc_cpu(pid)[0] for name, pid in pids.items()}
    r = resource.getrusage(resource.RUSAGE_SELF)
    cpu["poller"] = r.ru_utime + r.ru_stime
    return Probe(time.time(), cpu, busy_seconds(), own_cpu_by_process())


def window(a: Probe, b: Probe, ours: set[int]) -> dict[str, Any]:
    """Cores used between two probes by each of our processes, by the machine, and by the rest (the machine's
    busy time minus ours: other processes and kernel work), with the busiest other processes named."""
    wall = b.wall - a.wall
    cores = {f"{k}_cores": (b.cpu[k] - a.cpu[k]) / wall for k in a.cpu}
    others: dict[str, float] = {}
    for pid, (name, t) in b.everyone.items():
        if pid not in ours:  # a process new in the window counts with all of its CPU
            others[name] = others.get(name, 0.0) + t - a.everyone.get(pid, (name, 0.0))[1]
    top = sorted(others.items(), key=lambda kv: -kv[1])[:4]
    machine = (b.busy - a.busy) / wall
    return {"seconds": wall, **cores, "machine_cores": machine, "other_cores": max(0.0, machine - sum(cores.values())),
            "other_procs_cores": sum(others.values()) / wall,
            "others": [(n, round(s, 1)) for n, s in top if s >= 0.05]}


@dataclass
class Observed:
    latency: dict[tuple[str, float], float] = field(default_factory=dict)  # (agent, sampled_at) -> seconds
    polls: list[tuple[float, float]] = field(default_factory=list)  # (start, end) of each ListAgents call
    response_bytes: int = 0


def poll(stub: controller_pb2_grpc.ControllerStub, seconds: float, obs: Observed) -> None:
    """ListAgents every POLL_EVERY s for ``seconds``: last_seen (controller's clock at arrival) minus
    health.sampled_at (the simulator's clock at send; same machine, same clock) per heartbeat seen."""
    start = time.monotonic()
    k = 0
    while (due := start + k * POLL_EVERY) < start + seconds:
        time.sleep(max(0.0, due - time.monotonic()))
        t0 = time.time()
        resp = stub.ListAgents(cpb.ListAgentsRequest(), timeout=30)
        obs.polls.append((t0, time.time()))
        obs.response_bytes = obs.response_bytes or resp.ByteSize()
        for a in resp.agents:
            if a.health.sampled_at > 0:
                obs.latency.setdefault((a.info.name, a.health.sampled_at), a.last_seen - a.health.sampled_at)
        k += 1


def wait_reporting(stub: controller_pb2_grpc.ControllerStub, n: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        agents = stub.ListAgents(cpb.ListAgentsRequest(), timeout=30).agents
        if (up := sum(1 for a in agents if a.online and a.health.sampled_at > 0)) >= n:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {up} of {n} simulated agents are online and reporting health")
        time.sleep(0.5)


def during_poll(sent: float, polls: list[tuple[float, float]], starts: list[float]) -> bool:
    i = bisect.bisect_right(starts, sent) - 1
    return i >= 0 and sent <= polls[i][1]


def heartbeat_run(n: int, args: argparse.Namespace, run_dir: Path, console: Console) -> dict[str, Any]:
    """Controller + simulator for ``n`` agents: a polled window (latency) then a quiet one (CPU of heartbeats)."""
    run_dir.mkdir(parents=True)
    exe = [sys.executable, "-c", GC_TRACE] if args.gc_trace else [str(BIN / "zc-controller")]
    ctl = Daemon("zc-controller", [
        *exe, "--listen", "127.0.0.1:0", "--state-dir", str(run_dir / "state"),
        "--ready-file", str(run_dir / "controller.json"), "--heartbeat-interval", "1", "--log-level", "info",
        "--auto-pki", "--enroll-listen", "127.0.0.1:0", *(["--store", args.store_url] if args.store_url else []),
    ], run_dir / "controller.log", run_dir / "controller.json")
    sim: Daemon | None = None
    try:
        addr = ctl.start().ready["grpc"]
        console.print(f"[dim]{n} agents: controller {addr} pid {ctl.pid}; connecting the simulator...[/]")
        sim = Daemon("simulator", [
            sys.executable, str(HERE / "simagents.py"), "--agents", str(n), "--controller", addr,
            "--ready-file", str(run_dir / "sim.json"), "--stats-file", str(run_dir / "sim-stats.json"),
            "--pki-dir", str(run_dir / "state" / "pki"),
        ], run_dir / "simulator.log", run_dir / "sim.json")
        ready = sim.start(timeout=60 + n / 10).ready  # assigned first: an interrupt while it connects stops it
        if not ready["connected"]:
            raise RuntimeError(f"no simulated agent could register: {ready['errors']}")
        pki_dir = run_dir / "state" / "pki"
        admin = Trust(TlsPaths(str(pki_dir / "ca.pem"), str(pki_dir / "admin.pem"), str(pki_dir / "admin.key")),
                      kind="operator")
        with channel(addr, admin, options=POLL_CHANNEL) as ch:
            stub = controller_pb2_grpc.ControllerStub(ch)
            wait_reporting(stub, ready["connected"])
            time.sleep(SETTLE)
            pids = {"controller": ctl.pid, "simulator": sim.pid}
            ours = {*pids.values(), os.getpid()}
            console.print(f"[dim]{ready['connected']} agents heartbeating; polling ListAgents for "
                          f"{args.seconds:.0f}s, then {args.quiet_seconds:.0f}s without polling...[/]")
            obs = Observed()
            a = probe(pids)
            poll(stub, args.seconds, obs)
            b = probe(pids)
            time.sleep(args.quiet_seconds)
            c = probe(pids)
            mem = {"controller_rss_mib": vm_rss(ctl.pid) / 2**20, "controller_hwm_mib": vm_hwm(ctl.pid) / 2**20,
                   "simulator_rss_mib": vm_rss(sim.pid) / 2**20}
        sim.stop()  # first, so its streams end before the controller does: a clean stop for both
        stats = json.loads((run_dir / "sim-stats.json").read_text())
    finally:
        if sim is not None:
            sim.stop()
        ctl.stop()
    pauses = gc_pauses(run_dir / "controller.log") if args.gc_trace else None
    return summarize(n, ready, stats, obs, window(a, b, ours), window(b, c, ours), mem, pauses)


def vm_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def summarize(n: int, ready: dict[str, Any], stats: dict[str, Any], obs: Observed, polled: dict[str, Any],
              quiet: dict[str, Any], mem: dict[str, float], pauses: list[tuple[float, float]] | None
              ) -> dict[str, Any]:
    # Counted from the window start to one interval before the last poll: a heartbeat sent later may not have
    # been the latest at any poll yet, so it would count as missed for no fault of the controller.
    lo, hi = obs.polls[0][0], obs.polls[-1][0] - ready["interval"]
    beats = [(s, lag) for s, lag in stats["beats"] if lo <= s <= hi]
    lat = {k: v for k, v in obs.latency.items() if lo <= k[1] <= hi}
    starts = [p[0] for p in obs.polls]
    calm = [v for (_, sent), v in lat.items() if not during_poll(sent, obs.polls, starts)]
    r: dict[str, Any] = {
        "agents": n, "connected": ready["connected"], "connect_seconds": ready["connect_seconds"],
        "connect_errors": ready["errors"], "interval": ready["interval"], "heartbeat_bytes": ready["heartbeat_bytes"],
        "counted_seconds": hi - lo, "sent": len(beats), "observed": len(lat),
        "latency_ms": summary_ms(list(lat.values())), "latency_ms_outside_polls": summary_ms(calm),
        "send_lag_ms": summary_ms([lag for _, lag in beats]), "stream_errors": stats["errors"],
        "list_agents_ms": summary_ms([e - s for s, e in obs.polls]), "list_agents_bytes": obs.response_bytes,
        "polled": polled, "quiet": quiet, **mem,
    }
    if pauses is not None:
        inside = [d for end, d in pauses if lo <= end <= hi]
        clear = [v for (_, sent), v in lat.items() if not hit_by_pause(sent, v, pauses)]
        r["gc"] = {"full_collections": len(inside), "pause_ms": summary_ms(inside),
                   "latency_ms_clear_of_gc": summary_ms(clear)}
    r["notes"] = run_notes(r)
    return r


# Runs zc-controller's own main() with a timer on every full (generation 2) collection, logged to stderr as
# "gc2 END_WALL SECONDS": a full collection walks every tracked object while the event loop waits.
GC_TRACE = """
import gc, sys, time
start = [0.0]
def timer(phase, info):
    if info["generation"] != 2:
        return
    if phase == "start":
        start[0] = time.perf_counter()
    else:
        print(f"gc2 {time.time():.6f} {time.perf_counter() - start[0]:.6f}", file=sys.stderr, flush=True)
gc.callbacks.append(timer)
from zcrepl.controller.main import main
sys.exit(main(sys.argv[1:]))
"""


def gc_pauses(log: Path) -> list[tuple[float, float]]:
    """(end wall time, seconds) of each full collection the --gc-trace controller logged."""
    return [(float(w[1]), float(w[2])) for line in log.read_text(errors="replace").splitlines()
            if len(w := line.split()) == 3 and w[0] == "gc2"]


def hit_by_pause(sent: float, latency: float, pauses: list[tuple[float, float]]) -> bool:
    """Whether the heartbeat was in flight during a full collection (pauses sorted by end time)."""
    i = bisect.bisect_left(pauses, (sent, 0.0))
    return i < len(pauses) and pauses[i][0] - pauses[i][1] <= sent + latency


def run_notes(r: dict[str, Any]) -> list[str]:
    n, notes = r["agents"], []
    if r["connected"] < n:
        notes.append(f"{n} agents: only {r['connected']} registered ({'; '.join(r['connect_errors'])})")
    if r["stream_errors"]:
        notes.append(f"{n} agents: stream errors {dict(r['stream_errors'])}")
    sim = max(r["polled"]["simulator_cores"], r["quiet"]["simulator_cores"])
    if sim >= 0.9 or r["send_lag_ms"]["p99"] > TARGET_P99_MS:
        notes.append(f"{n} agents: SIMULATOR SATURATED ({sim:.2f} cores, send lag p99 "
                     f"{r['send_lag_ms']['p99']:.0f} ms): heartbeats left late, the controller's figures are not "
                     "its limit")
    for name in ("polled", "quiet"):
        w = r[name]
        # As run.py: over 5% of a core. The rest of the machine catches processes that came and went within
        # the window (another session's test run), which no per-process snapshot sees.
        if max(w["other_procs_cores"], w["other_cores"]) > 0.05:
            who = ", ".join(f"{k} {v:.1f}s" for k, v in w["others"]) or "none still running"
            notes.append(f"{n} agents: NOISE in the {name} window: the rest of the machine used "
                         f"{w['other_cores']:.2f} cores (busiest other processes: {who}); the machine has "
                         f"{os.cpu_count()}")
    return notes


# -- steady-state history (in process) ------------------------------------------------------------
def history_run(n: int, samples: int, seed: int) -> dict[str, Any]:
    """RSS and full-collection time of the controller's own Registry holding ``samples`` heartbeats per agent
    (converted by the controller's health_from_pb): the steady state a short window never reaches, since the
    history fills for 15 minutes."""
    reg, rng = Registry(offline_after=5.0), random.Random(seed)
    gc.collect()
    rss0, tracked0 = vm_rss(os.getpid()), len(gc.get_objects())
    for i in range(n):
        session = Session(AgentInfo(f"sim{i:05d}"), 0.0, 0.0)
        reg.attach(session)
        h = fake_health(rng)
        for k in range(samples):
            vary(h, rng)
            reg.heartbeat(session, health_from_pb(h), float(k))
    kept = sum(len(r.history) for r in reg.agents.values() if r.history is not None)
    grown, tracked = vm_rss(os.getpid()) - rss0, len(gc.get_objects()) - tracked0
    pauses = []
    for _ in range(3):
        t0 = time.perf_counter()
        gc.collect()
        pauses.append(time.perf_counter() - t0)
    del reg
    gc.collect()
    return {"agents": n, "samples": samples, "kept": kept, "rss_mib": grown / 2**20, "bytes_per_sample": grown / kept,
            "tracked_objects": tracked, "full_gc_ms": statistics.median(pauses) * 1000}


# -- scheduling pass ------------------------------------------------------------------------------
def schedule_run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    now = time.time()
    sc = make_scenario(args.jobs, args.hosts, args.running, args.seed, now)
    policy = controller_policy(tmp / "policy-state")
    sc.plan(policy, now)  # warm-up: imports, caches
    times, cpu = [], []
    before = probe({})
    for _ in range(args.passes):
        t0, c0 = time.perf_counter(), time.thread_time()
        decisions = sc.plan(policy, now)
        times.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)  # wall minus this is time the pass waited for a core
    noise = window(before, probe({}), {os.getpid()})
    ms = sorted(t * 1000 for t in times)
    r: dict[str, Any] = {
        "jobs": len(sc.queued), "hosts": len(sc.hosts), "running": len(sc.running), "passes": len(times),
        "fanout_jobs": len(sc.sources), "host_kinds": HOST_KINDS, "window": noise,
        "median_ms": statistics.median(ms), "min_ms": ms[0], "max_ms": ms[-1],
        "cpu_median_ms": statistics.median(cpu) * 1000,
        "started": sum(d.start for d in decisions),
        "waiting": dict(Counter(reason_kind(d.reason) for d in decisions if not d.start).most_common()),
        "policy": repr(policy),
    }
    if r["median_ms"] >= TARGET_PLAN_MS or args.profile:
        r["profile"] = profile_plan(sc, policy, now)
    r["store"] = label(args.store)
    r["engine"] = engine_pass.run(args.jobs, args.hosts, ENGINE_PASSES, args.store_url, args.seed)
    return r


# -- main -----------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/scale.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", default="1000", help="simulated agents; a comma list runs each in turn (250,500,1000)")
    p.add_argument("--seconds", type=float, default=30.0, help="latency window, polling ListAgents (default 30)")
    p.add_argument("--quiet-seconds", type=float, default=15.0,
                   help="window without polling, for the controller's CPU of heartbeats alone (default 15)")
    p.add_argument("--jobs", type=int, default=10_000, help="queued jobs in the scheduling pass (default 10000)")
    p.add_argument("--hosts", type=int, default=200, help="hosts the jobs are spread over (default 200)")
    p.add_argument("--running", type=int, default=150, help="jobs already running (default 150)")
    p.add_argument("--passes", type=int, default=20, help="timed plan() passes after one warm-up (default 20)")
    p.add_argument("--profile", action="store_true", help="profile plan() even when it meets its target")
    p.add_argument("--gc-trace", action="store_true",
                   help="run zc-controller's main() under a timer of full GC collections and report the pauses")
    p.add_argument("--history-samples", type=int, default=0, metavar="K",
                   help="also measure RSS and full-GC time of a registry holding K health samples per agent "
                        "(900 = the controller's 15-minute history at 1 s; in process, for the largest --agents)")
    p.add_argument("--skip-heartbeats", action="store_true")
    p.add_argument("--skip-schedule", action="store_true")
    p.add_argument("--store", default="", metavar="PATH|URL|postgres",
                   help="the controller's store: SQLite in its state dir (default), a postgresql:// URL, or "
                        "'postgres': a throwaway server for the run")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--keep", action="store_true", help="keep the temp dir (controller state, logs)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="where tables are saved")
    args = p.parse_args(argv)
    try:
        args.counts = [int(x) for x in args.agents.split(",") if x.strip()]
    except ValueError:
        p.error(f"--agents {args.agents!r}: give a number or a comma list of numbers")
    if not args.counts or min(args.counts) < 1 or args.seconds < 2 * POLL_EVERY + 2:
        p.error("--agents must be positive and --seconds at least 3")
    return args


def _sigterm(_sig: int, _frame: Any) -> None:
    raise KeyboardInterrupt  # so the finally blocks stop the controller and the simulator


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    console = Console()
    tmp = Path(tempfile.mkdtemp(prefix="zcscale-"))
    # Before the runs: the controller runs the working tree (editable install) as it is when it starts.
    facts = machine_facts(Path(tempfile.gettempdir()), REPO)
    doc: dict[str, Any] = {"heartbeats": [], "history": {}, "schedule": {}}
    interrupted = failed = False
    try:
        with store_spec(args.store) as fresh:
            for n in [] if args.skip_heartbeats else args.counts:
                args.store_url = fresh()
                doc["heartbeats"].append(heartbeat_run(n, args, tmp / f"agents-{n}", console))
            if args.history_samples:
                console.print(f"[dim]health history: {max(args.counts):,} agents x {args.history_samples} "
                              "samples...[/]")
                doc["history"] = history_run(max(args.counts), args.history_samples, args.seed)
            if not args.skip_schedule:
                console.print(f"[dim]scheduling pass: {args.jobs:,} jobs over {args.hosts} hosts...[/]")
                args.store_url = fresh()
                doc["schedule"] = schedule_run(args, tmp)
    except KeyboardInterrupt:
        interrupted = True
        console.print("[yellow]interrupted[/]: the controller and the simulator are stopped")
    except (RuntimeError, grpc.RpcError) as err:  # a daemon did not start, or stopped answering: keep the logs
        console.print(f"[red]bench/scale.py: {err}[/]")
        failed = args.keep = True
    finally:
        if args.keep:
            console.print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if not any(doc.values()):
        return 130 if interrupted else 1
    command = shlex.join([sys.executable, "bench/scale.py", *argv])
    doc["meta"] = {"command": command, "machine": facts, "interrupted": interrupted}
    show(console, doc)
    md, js = save(args.out, doc)
    console.print(f"saved {md} and {js}")
    return 130 if interrupted else 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
