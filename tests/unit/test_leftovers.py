"""Nothing left behind: temp names say who wrote them, sweeps remove only what dead writers left, and the
partial area is kept within its age and size (real files, real processes)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zcrepl.agent.transfer import saferoot
from zcrepl.agent.transfer.leftovers import sweep_destination, sweep_temps
from zcrepl.agent.transfer.partial import AREA, PartialArea
from zcrepl.agent.transfer.saferoot import SafeRoot, process_start, temp_name, writer_gone, writer_token


def _dead_writer() -> bytes:
    """The writer token of a process that has exited."""
    p = subprocess.run([sys.executable, "-c", "from zcrepl.agent.transfer.saferoot import writer_token as w;"
                        "print(w().decode())"], capture_output=True, text=True, check=True)
    return p.stdout.strip().encode()


def _temp(leaf: bytes, writer: bytes) -> bytes:
    return saferoot.TEMP_PREFIX + leaf + b".0badc0de." + writer + b".tmp"


def test_a_temp_name_carries_its_writer_and_stays_within_the_name_limit() -> None:
    name = temp_name(b"big.bin")
    assert name.startswith(b".zc.big.bin.") and name.endswith(b"." + writer_token() + b".tmp")
    assert len(temp_name(b"x" * 255)) == 255
    pid = os.getpid()
    assert writer_token().endswith(b"-%x-%x" % (pid, process_start(pid)))


@pytest.mark.parametrize(("writer", "gone"), [
    ("self", False),
    ("dead", True),
    ("earlier boot", True),
    ("other pid namespace", None),
    ("no writer (older agents)", None),
    ("reused pid", True),
])
def test_writer_gone(writer: str, gone: bool | None) -> None:
    ours = writer_token()
    tag, pid, start = ours[:12], os.getpid(), process_start(os.getpid())
    token = {
        "self": ours,
        "dead": _dead_writer(),
        "earlier boot": b"%06x" % (int(ours[:6], 16) ^ 1) + ours[6:],
        "other pid namespace": ours[:6] + b"%06x" % (int(ours[6:12], 16) ^ 1) + ours[12:],
        "no writer (older agents)": b"",
        "reused pid": tag + b"-%x-%x" % (pid, (start or 0) + 1),  # the pid runs, but started at another time
    }[writer]
    name = _temp(b"f", token) if token else saferoot.TEMP_PREFIX + b"f.0badc0de.tmp"
    assert writer_gone(name) is gone


def test_a_sweep_removes_only_what_dead_writers_left(tmp_path: Path) -> None:
    dead, ours = _dead_writer(), writer_token()
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "d" / "deeper").mkdir(parents=True)
    (root / os.fsdecode(AREA)).mkdir()
    outside.mkdir()
    os.symlink(outside, root / "d" / "link")
    gone = [root / os.fsdecode(_temp(b"a", dead)), root / "d" / "deeper" / os.fsdecode(_temp(b"b", dead))]
    kept = [root / os.fsdecode(_temp(b"c", ours)), root / "d" / os.fsdecode(saferoot.TEMP_PREFIX + b"old.tmp"),
            outside / os.fsdecode(_temp(b"e", dead)),  # reachable only through a symlink: never followed
            root / os.fsdecode(AREA) / os.fsdecode(_temp(b"p", dead)),  # the partial area has its own sweep
            root / "d" / "regular-file"]
    for p in gone + kept:
        p.write_bytes(b"x" * 1000)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        swept = sweep_temps(fd)
    finally:
        os.close(fd)
    assert (swept.temps, swept.temp_bytes) == (2, 2000)
    assert [p for p in gone if p.exists()] == []
    assert [p for p in kept if not p.exists()] == []


def _partial(root: Path, key: str, size: int, age: float) -> None:
    area = root / os.fsdecode(AREA)
    area.mkdir(exist_ok=True)
    for suffix, data in ((".part", b"p" * size), (".json", b"{}")):
        f = area / (key + suffix)
        f.write_bytes(data)
        t = time.time() - age
        os.utime(f, (t, t))


def test_the_partial_area_is_kept_within_its_age_and_size(tmp_path: Path) -> None:
    _partial(tmp_path, "old", 4096, age=8 * 86400)
    _partial(tmp_path, "big-older", 64 << 10, age=3600)
    _partial(tmp_path, "big-newer", 64 << 10, age=60)
    dead = tmp_path / os.fsdecode(AREA) / os.fsdecode(_temp(b"sidecar", _dead_writer()))
    dead.write_bytes(b"{}")
    root = SafeRoot(os.fsencode(tmp_path))
    try:
        removed, freed = PartialArea(root).sweep(max_age=7 * 86400, max_bytes=100 << 10)
    finally:
        root.close()
    left = sorted(p.name for p in (tmp_path / os.fsdecode(AREA)).iterdir())
    assert left == ["big-newer.json", "big-newer.part"]  # too old, then the oldest over the size, then a dead temp
    assert removed == 2 and freed >= 4096 + (64 << 10)


def test_sweeping_a_destination_that_does_not_exist_yet_is_nothing(tmp_path: Path) -> None:
    root = SafeRoot(os.fsencode(tmp_path))
    try:
        assert not sweep_destination(root, (b"not", b"yet"), 3600, 0)
    finally:
        root.close()
