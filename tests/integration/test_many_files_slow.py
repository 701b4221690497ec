"""A tree of 100,000 files through real agent processes: exact copy, a no-change re-sync, and each agent's peak
RSS under a bound that a manifest held whole (about 0.6-0.9 KB per entry on each end before streaming) would
break. Slow (about a minute): ``pytest -m slow tests/integration/test_many_files_slow.py``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from zchelpers import Cluster

pytestmark = pytest.mark.slow

DIRS, PER = 100, 1000
RSS_BOUND = 100 << 20  # bytes; the agent's own baseline is about 60 MB


def vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


def make(root: Path) -> None:
    for d in range(DIRS):
        dp = root / f"d{d:03d}"
        dp.mkdir(parents=True)
        dfd = os.open(dp, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for i in range(PER):
                fd = os.open(f"f{i:04d}", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=dfd)
                os.write(fd, b"%d/%d\n" % (d, i))
                os.close(fd)
        finally:
            os.close(dfd)


def listing(root: Path) -> dict[str, bytes]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = Path(p).read_bytes()
    return out


def test_a_hundred_thousand_files_in_bounded_memory(cluster: Cluster, tmp_path: Path) -> None:
    src, dst = tmp_path / "a" / "src", tmp_path / "b" / "dst"
    make(src)
    for _ in ("copy", "no change"):
        rc, out, err = cluster.ctl("replicate", f"hostA:{src}", f"hostB:{dst}", "--durability", "none", "--json",
                                   timeout=900)
        assert rc == 0, err
        assert json.loads(out)["state"] == "done"
    assert listing(dst) == listing(src)
    for name in ("hostA", "hostB"):
        proc = cluster.daemons[name].proc
        assert proc is not None
        assert vm_hwm(proc.pid) < RSS_BOUND, f"{name} peaked at {vm_hwm(proc.pid) >> 20} MiB"
