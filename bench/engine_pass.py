"""The engine's scheduling pass with its store: what ``Engine.tick()`` costs the event loop over 10,000 queued jobs,
store writes included (bench/scale.py times ``plan()`` alone), and what one store call costs its caller.

    .venv/bin/python bench/engine_pass.py [--jobs 10000] [--hosts 200] [--store PATH|postgresql://...|postgres]

Pass 1 is the write-heavy one: every waiting job gets its first wait reason (a job save and an explain record
each) and the first jobs start; later passes change little. "store drained" is how long the store's thread
then needs to commit what the pass queued (off the loop). Works on trees before the store thread too (a
``Store(state_dir)`` whose calls run on the caller's thread), for before/after figures.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from stores import label, store_spec

from zcrepl.controller.engine import Engine
from zcrepl.core.config import ControllerConfig
from zcrepl.core.types import AgentInfo, DiskUsage, Endpoint, HostHealth, JobOptions

TiB = 1 << 40


def make_store(spec: str, state_dir: str) -> Any:
    try:
        from zcrepl.controller.store import open_store
    except ImportError:  # a tree from before --store: SQLite in the state dir, calls on the caller's thread
        from zcrepl.controller.store import Store
        return Store(state_dir)
    return open_store(spec, state_dir)


def drain(store: Any) -> None:
    if hasattr(store, "run"):
        store.run(lambda: None)


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(jobs: int, hosts: int, passes: int, spec: str, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="zc-engine-pass-") as tmp:
        now = time.time()
        store = make_store(spec, tmp)
        try:
            engine = Engine(ControllerConfig(state_dir=tmp), store, clock=lambda: now)
            names = [f"host{i:04d}" for i in range(hosts)]
            health = HostHealth(sampled_at=now, cpu_count=16, exports=(DiskUsage(b"/srv", 20 * TiB, 0, 20 * TiB, 0.0),))
            for i, name in enumerate(names):
                s = engine.connect(AgentInfo(name, data_address=f"10.0.{i // 250}.{i % 250}:7422",
                                             exports=(b"/srv",)), [])
                engine.heartbeat(s, health)
            t0 = time.perf_counter()
            for i in range(jobs):
                src, dst = rng.sample(names, 2)
                engine.submit(Endpoint(src, b"/srv/set%05d" % i), Endpoint(dst, b"/srv/in/set%05d" % i), JobOptions())
            submit = time.perf_counter() - t0
            drain(store)
            ticks = [timed(engine.tick)]
            drained = timed(lambda: drain(store))
            ticks += [timed(engine.tick) for _ in range(passes - 1)]
            drain(store)
            job = next(iter(engine.jobs.values()))
            calls = 2000
            t0 = time.perf_counter()
            for _ in range(calls):
                store.save_job(job)
            per_call = (time.perf_counter() - t0) / calls
            drain(store)
            return {"jobs": jobs, "hosts": hosts, "store": spec or "sqlite (state dir)",
                    "started": len(engine.runs), "submit_us": submit / jobs * 1e6,
                    "pass1_ms": ticks[0] * 1000, "drained_ms": drained * 1000,
                    "later_ms": statistics.median(ticks[1:]) * 1000 if len(ticks) > 1 else 0.0,
                    "save_job_us": per_call * 1e6}
        finally:
            store.close()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=10_000)
    p.add_argument("--hosts", type=int, default=200)
    p.add_argument("--passes", type=int, default=5)
    p.add_argument("--runs", type=int, default=3, help="repeat and report each run")
    p.add_argument("--store", default="", help="SQLite file, postgresql:// URL, or 'postgres' (a throwaway server "
                   "for the run); default: SQLite in a temp dir")
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    print("| store | jobs | hosts | started | submit µs/job | pass 1 ms | store drained ms | later passes ms |"
          " save_job µs/call |")
    print("|---|---|---|---|---|---|---|---|---|")
    with store_spec(args.store) as fresh:
        for i in range(args.runs):
            r = run(args.jobs, args.hosts, args.passes, fresh(), args.seed + i)
            print(f"| {label(args.store)} | {r['jobs']} | {r['hosts']} | {r['started']} | {r['submit_us']:.1f} | "
                  f"{r['pass1_ms']:.1f} | {r['drained_ms']:.1f} | {r['later_ms']:.1f} | {r['save_job_us']:.1f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
