"""The `job` durability flush alone, while another process writes to the same filesystem.

Each round writes the same tree (FILES files of 4 KiB in DIRS directories) the way the receiver does (temp file
opened O_EXCL, bytes, mode and mtime set on the fd, rename) and then makes it durable in one of three ways:

- ``job``: what zcrepl does since issue 11 (agent/transfer/flush.py: writeback started per batch, data
  waited for, one journal commit on XFS and journaled ext4 that covers the changed directories too; elsewhere
  every file and changed directory fsynced);
- ``syncfs``: what it did before (one syncfs of the destination filesystem);
- ``none``: nothing (the page cache only).

With ``--dirty`` another process (``dd``, no sync) starts writing that many bytes to a file on the same
filesystem once the tree is written, and the flush starts when that process has ``--wait-dirty`` MiB dirty (on
this VM the kernel holds at most ~0.9 GB dirty and writes 2 GiB in ~5 s, so it is still writing during the
flush). The figure is the flush alone (writing the tree is the same code for every mode, and what the kernel's
throttling of dirtiers slows down). Rounds are interleaved (job, syncfs, none, job...), each after an untimed
``sync`` and after the previous dirtier finished; medians are printed.

    .venv/bin/python bench/flush.py --rounds 7 --dirty 2G --data /tmp/zcflush
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

import loopfs

from zcrepl.agent.transfer.atomic import AtomicFile
from zcrepl.agent.transfer.flush import JobFlush, syncfs

MODES = ("job", "syncfs", "none")


class Tree:
    """The tree written the way the receiver writes (``job``: each fd handed to the flush as it completes)."""

    def __init__(self, root: Path, files: int, dirs: int, mode: str) -> None:
        root.mkdir()
        self.mode = mode
        self.rfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        self.flush = JobFlush(self.rfd) if mode == "job" else None
        self.dfds: list[int] = []
        data = os.urandom(4096)
        for d in range(dirs):
            os.mkdir(f"d{d:03d}", 0o755, dir_fd=self.rfd)
            self.dfds.append(os.open(f"d{d:03d}", os.O_RDONLY | os.O_DIRECTORY, dir_fd=self.rfd))
        for i in range(files):
            tmp = AtomicFile(self.dfds[i % dirs], b"f%06d" % i, len(data))
            os.pwrite(tmp.fd, data, 0)
            tmp.commit(0o644, 1_700_000_000_000_000_000 + i, flush=self.flush, size=len(data))

    def make_durable(self) -> float:
        """Seconds until the tree is durable per the mode."""
        t0 = time.perf_counter()
        if self.flush is not None:
            for dfd in self.dfds:
                self.flush.dir_changed(os.dup(dfd))
            self.flush.dir_changed(os.dup(self.rfd))
            self.flush.wait("bench")
        elif self.mode == "syncfs":
            syncfs(self.rfd)
        return time.perf_counter() - t0

    def close(self) -> None:
        if self.flush is not None:
            self.flush.close()
        for fd in (*self.dfds, self.rfd):
            os.close(fd)


def dirty_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Dirty:"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--files", type=int, default=3000)
    p.add_argument("--dirs", type=int, default=30)
    p.add_argument("--dirty", default="2G", help="bytes the other process writes (0: no other process), e.g. 2G")
    p.add_argument("--wait-dirty", type=int, default=512,
                   help="MiB the other process must have dirty before the flush starts (at most 3 s of waiting)")
    p.add_argument("--data", type=Path, default=Path("/tmp/zcflush"))
    p.add_argument("--loop-ext4", metavar="SIZE", default="",
                   help="run on a journaled ext4 image mounted over DATA (loopfs.py), e.g. 8G; needs root")
    args = p.parse_args()
    if args.loop_ext4:
        with loopfs.mounted(args.data, loopfs.parse_size(args.loop_ext4)):
            return _run(args)
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    dirty_mib = int(float(args.dirty.rstrip("GgMm")) * (1024 if args.dirty[-1] in "Gg" else 1))
    args.data.mkdir(parents=True, exist_ok=True)
    flushes: dict[str, list[float]] = {m: [] for m in MODES}
    dirty: dict[str, list[float]] = {m: [] for m in MODES}
    after: dict[str, list[float]] = {m: [] for m in MODES}
    dirt, tree = args.data / "dirt", args.data / "tree"
    for rnd in range(args.rounds):
        for mode in MODES:
            shutil.rmtree(tree, ignore_errors=True)
            dirt.unlink(missing_ok=True)
            os.sync()
            written = Tree(tree, args.files, args.dirs, mode)  # not timed: the same for every mode
            dd = subprocess.Popen(["dd", "if=/dev/zero", f"of={dirt}", "bs=1M", f"count={dirty_mib}"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) if dirty_mib else None
            try:
                deadline = time.monotonic() + 3
                while dd is not None and dirty_bytes() < args.wait_dirty << 20 and time.monotonic() < deadline:
                    time.sleep(0.02)
                dirty[mode].append(dirty_bytes() / (1 << 20))
                flushes[mode].append(written.make_durable())
                t0 = time.perf_counter()  # what was dirty by now: what a whole-filesystem flush waits for
                fd = os.open(args.data, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    syncfs(fd)
                finally:
                    os.close(fd)
                after[mode].append(time.perf_counter() - t0)
            finally:
                written.close()
                if dd is not None:
                    dd.wait()
            print(f"round {rnd + 1} {mode:<6} flush {flushes[mode][-1]:6.3f} s with {dirty[mode][-1]:5.0f} MiB dirty"
                  f"   syncfs after {after[mode][-1]:6.3f} s", flush=True)
    shutil.rmtree(tree, ignore_errors=True)
    dirt.unlink(missing_ok=True)
    print(f"\n{args.files} files x 4 KiB in {args.dirs} dirs, flushed while another process writes {args.dirty}; "
          f"medians of {args.rounds} interleaved rounds:")
    print("| durability | flush s, median (min-max) | MiB dirty when it started, median | syncfs right after, s |")
    print("|---|---|---|---|")
    for m in MODES:
        f = flushes[m]
        print(f"| {m} | {statistics.median(f):.3f} ({min(f):.3f}-{max(f):.3f}) | {statistics.median(dirty[m]):.0f} "
              f"| {statistics.median(after[m]):.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
