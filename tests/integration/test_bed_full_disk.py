"""A destination on a small filesystem (a size-limited tmpfs) that fills mid-job: the job fails at once with one
sentence naming the host, the path and the space needed against the space free; every file that was there
before is intact (old or new version, never a part), and no temp or partial file is left. On the test bed."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from zchelpers import BedCluster, Cluster, make_tree, wait_for, write_file

SIZE = 40 << 20


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """hostB's export on a 40 MiB tmpfs (set up before, and so removed after, the cluster)."""
    disk = tmp_path / "b"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "zcrepl-test", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=True)


def _cluster(make: BedCluster, tmp_path: Path) -> Cluster:
    # No margin anywhere: the job starts and the filesystem really fills (the defaults keep 1 GiB free).
    (tmp_path / "controller.toml").write_text("free_margin_bytes = 1\n")
    (tmp_path / "agent.toml").write_text("free_margin_bytes = 0\n")
    return make(agent_flags=("--config", str(tmp_path / "agent.toml")), config=str(tmp_path / "controller.toml"))


def _before(dst: Path) -> dict[str, bytes]:
    dst.mkdir()
    old = {"precious.txt": b"was here before" * 100, "f00000.dat": b"an older version" * 100}
    for name, data in old.items():
        write_file(dst / name, data)
    return old


def _job_fails(c: Cluster, src: Path, dst: Path) -> dict[str, object]:
    rc, out, err = c.ctl("replicate", "--json", f"hostA:{src}", f"hostB:{dst}")
    assert rc == 1, (rc, err)
    job = json.loads(out)
    assert job["state"] == "failed" and job["attempts"] == 1, job  # another attempt would fail the same way
    return job


def _intact(src: Path, dst: Path, old: dict[str, bytes]) -> None:
    for name, data in old.items():
        now = (dst / name).read_bytes()
        assert now == data or ((src / name).exists() and now == (src / name).read_bytes()), name
    for p in dst.rglob("*"):  # whatever arrived, arrived whole
        if p.is_file() and not p.is_symlink() and p.name not in old and ".zc.partial" not in p.parts:
            assert p.read_bytes() == (src / p.relative_to(dst)).read_bytes(), p
    wait_for(lambda: not list(dst.rglob(".zc.*")), 10, what="no temp or partial file left")


def test_large_files_that_no_longer_fit(small_disk: Path, make_bed_cluster: BedCluster, tmp_path: Path) -> None:
    c = _cluster(make_bed_cluster, tmp_path)
    src, dst = tmp_path / "a" / "src", small_disk / "dst"
    make_tree(src, files=30)
    for i in range(4):  # 64 MiB in all: the third one does not fit
        (src / f"big{i}.bin").write_bytes(os.urandom(16 << 20))
    old = _before(dst)
    job = _job_fails(c, src, dst)
    error = str(job["error"])
    assert error.startswith(f"hostB:{dst} <- hostA: not enough space for a file of 16,777,216 bytes ("), error
    assert "free some space or choose another destination" in error
    _intact(src, dst, old)


def test_many_small_files_that_no_longer_fit(small_disk: Path, make_bed_cluster: BedCluster, tmp_path: Path) -> None:
    c = _cluster(make_bed_cluster, tmp_path)
    src, dst = tmp_path / "a" / "src", small_disk / "dst"
    src.mkdir(parents=True)
    for i in range(720):  # 45 MiB of files too small to be reserved up front: they fail as they are written
        (src / f"f{i:05d}.dat").write_bytes(os.urandom(64 << 10))
    old = _before(dst)
    job = _job_fails(c, src, dst)
    error = str(job["error"])
    assert error.startswith(f"hostB:{dst} <- hostA: the filesystem is full: at least "), error
    need, free = (int(n.replace(",", "")) for n in re.findall(r"([\d,]+) (?:more bytes|free)", error))
    assert need > free >= 0, error
    assert "free some space or choose another destination" in error and "No space left on device" in error
    _intact(src, dst, old)
