"""A journaled ext4 for the benchmark's trees: an image file, `mkfs.ext4` defaults, mounted over loop.

Why: this VM's root filesystem is ext4 *without* a journal, and there the kernel's inode allocator checks every
free inode it passes for a recent deletion (``recently_deleted`` in ext4/ialloc.c, only on journal-less
filesystems). After a benchmark round's ``rm -rf`` that check is most of the cost of creating a file: 3,000
files of 4 KiB took 0.09 s on a fresh tree and 0.3-2 s after deletions (perf: ~70% of the time in
``recently_deleted`` under ``ext4_create``), for every tool alike, and the round-to-round spread drowned the
tools' differences. A default `mkfs.ext4` (what servers run) has a journal and no such check: the same 3,000
files take 0.09 s after any history. The image lives on the same disk, so data still goes to the same device.

Needs root (mount). The image is kept between runs (the generated workloads in it too; what was deleted in it is
trimmed before unmounting, so the sparse file holds only live data); ``--loop-ext4`` on the
benchmarks mounts it over ``--data`` for the run and unmounts it afterwards.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path


def parse_size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    num, unit = (t[:-1], t[-1]) if t and t[-1] in units else (t, "")
    return int(float(num) * units[unit])


@contextlib.contextmanager
def mounted(data: Path, size: int, bytes_per_inode: int = 16384) -> Iterator[Path]:
    """``data`` is a fresh-or-kept journaled ext4 for the duration; the image is ``<data>.ext4.img``."""
    if os.geteuid() != 0:
        raise SystemExit("--loop-ext4 mounts a filesystem image and needs root")
    if os.path.ismount(data):
        yield data  # already mounted (by hand, or by an outer run): use it as it is
        return
    image = data.with_name(data.name + ".ext4.img")
    if not image.exists():
        image.parent.mkdir(parents=True, exist_ok=True)
        with open(image, "wb") as f:
            f.truncate(size)  # sparse: blocks are taken as the trees are written
        subprocess.run(["mkfs.ext4", "-q", "-F", "-i", str(bytes_per_inode), str(image)], check=True)
    data.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(data)], check=True)
    try:
        yield data
    finally:
        # Blocks freed inside (each round's rm -rf) stay allocated in the sparse image until trimmed: without
        # this, a run of W1-W4 grows the image to its full size on the host's disk.
        subprocess.run(["fstrim", str(data)], check=False, capture_output=True)
        subprocess.run(["umount", str(data)], check=False)
