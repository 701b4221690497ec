#!/usr/bin/env python3
"""A fuzz campaign: the property-based fuzz tests (tests/unit/test_fuzz_*.py, slow ones included) with the
hypothesis ``campaign`` profile, file after file with a fresh seed each time, until the time is up.

    .venv/bin/python scripts/fuzz.py --minutes 10            # what the README documents
    .venv/bin/python scripts/fuzz.py --minutes 2 --scale 5 -k receive

Prints what ran: per target the rounds, examples tried and failing, and seconds; then the totals. Exit 0
when nothing failed, 1 otherwise. A failing round's whole output (the falsifying example, its
``@reproduce_failure`` blob) goes to a log file outside the checkout, with the seed that replays it:
``ZC_FUZZ_PROFILE=campaign ZC_FUZZ_SCALE=S ZC_SLOW=1 .venv/bin/pytest FILE --hypothesis-seed=SEED``.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# "tests/unit/test_fuzz_frame.py::test_round_trip[need]:" opens a target's statistics block.
_TARGET = re.compile(r"^(tests/\S+::\S+):$")
_PHASE = re.compile(r"during (\w+) phase \(([\d.]+) seconds\)")
_COUNTS = re.compile(r"(\d+) passing.*?(\d+) failing.*?(\d+) invalid")
_FAILED = re.compile(r"^FAILED (\S+)")


@dataclass
class Tally:
    rounds: int = 0
    examples: int = 0
    failing: int = 0
    seconds: float = 0.0


def parse(output: str, tallies: dict[str, Tally]) -> None:
    """Add one pytest run's ``--hypothesis-show-statistics`` blocks to ``tallies``."""
    target: str | None = None
    for line in output.splitlines():
        if m := _TARGET.match(line.strip()):
            target = m.group(1).removeprefix("tests/unit/")
            tallies.setdefault(target, Tally()).rounds += 1
        elif target is not None and (m := _PHASE.search(line)):
            tallies[target].seconds += float(m.group(2))
        elif target is not None and (m := _COUNTS.search(line)):
            passing, failing, invalid = map(int, m.groups())
            tallies[target].examples += passing + failing + invalid
            tallies[target].failing += failing


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="start no new round after this (default 10)")
    ap.add_argument("--scale", type=int, default=20, help="times the ci budgets per round (default 20)")
    ap.add_argument("-k", default="", help="only the fuzz files whose name contains this")
    ap.add_argument("--seed", type=int, default=None, help="seed of the first round (default: random)")
    args = ap.parse_args(argv)

    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests" / "unit").glob("test_fuzz_*.py")
                   if args.k in p.name and p.name != "test_fuzz_regressions.py")
    if not files:
        print(f"no fuzz file matches {args.k!r}", file=sys.stderr)
        return 2
    pytest = Path(sys.executable).with_name("pytest")
    env = dict(os.environ, ZC_FUZZ_PROFILE="campaign", ZC_FUZZ_SCALE=str(args.scale), ZC_SLOW="1")
    rng = random.Random(args.seed)
    log = Path(tempfile.gettempdir()) / f"zcrepl-fuzz-{time.strftime('%Y%m%d-%H%M%S')}.log"
    print(f"fuzz campaign: {len(files)} files, scale {args.scale}, {args.minutes:g} min; failures logged to {log}")

    tallies: dict[str, Tally] = {}
    failed: list[str] = []
    start = time.monotonic()
    deadline = start + args.minutes * 60
    n = 0
    while time.monotonic() < deadline:
        path = files[n % len(files)]
        seed = args.seed + n if args.seed is not None else rng.randrange(2**32)
        n += 1
        t0 = time.monotonic()
        # A temp dir of its own: pytest then never sweeps the shared numbered ones (other runs' leftovers).
        with tempfile.TemporaryDirectory(prefix="zcrepl-fuzz-") as basetemp:
            cmd = [str(pytest), path, "-q", "-rf", "--hypothesis-show-statistics", f"--hypothesis-seed={seed}",
                   f"--basetemp={basetemp}/t"]
            run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
        parse(run.stdout, tallies)
        bad = [m.group(1) for line in run.stdout.splitlines() if (m := _FAILED.match(line))]
        status = "ok" if run.returncode == 0 else f"FAILED ({', '.join(bad) or f'exit {run.returncode}'})"
        print(f"  round {n:3d}  {path:38s} seed {seed:10d}  {time.monotonic() - t0:6.1f} s  {status}", flush=True)
        if run.returncode != 0:
            failed += bad or [path]
            with log.open("a") as f:
                f.write(f"===== {path} --hypothesis-seed={seed} (ZC_FUZZ_SCALE={args.scale})\n")
                f.write(run.stdout + run.stderr)

    width = max(len(t) for t in tallies) if tallies else 10
    print(f"\n{'target':{width}s}  rounds     tried  failing  seconds")
    for target, t in sorted(tallies.items()):
        print(f"{target:{width}s}  {t.rounds:6d}  {t.examples:8d}  {t.failing:7d}  {t.seconds:7.1f}")
    total = sum(t.examples for t in tallies.values())
    print(f"\n{n} rounds, {len(tallies)} targets, {total} examples in {time.monotonic() - start:.0f} s; "
          f"{len(failed)} failures" + (f": {', '.join(sorted(set(failed)))} (see {log})" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
