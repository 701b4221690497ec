"""Deterministic trees for the demo and the benchmarks: same seed, same bytes, same names."""

from __future__ import annotations

import os
import random
from pathlib import Path


def generate_tree(root: Path, *, files: int, big_bytes: int = 0, dirs: int = 0, seed: int = 20240601,
                  small_max: int = 16 << 10) -> int:
    """Write ``files`` small files spread over ``dirs`` nested directories, one ``big.bin`` of
    ``big_bytes``, a few symlinks (one dangling) and an empty directory. Returns the bytes written."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    dirs = dirs or max(1, files // 100)
    paths = [root]
    for i in range(dirs):
        parent = paths[rng.randrange(len(paths))] if len(paths) < 5 or rng.random() < 0.5 else paths[0]
        d = parent / f"dir{i:04d}"
        d.mkdir(exist_ok=True)
        paths.append(d)
    total = 0
    pool = rng.randbytes(1 << 20)
    for i in range(files):
        size = rng.randrange(small_max + 1)
        off = rng.randrange(len(pool) - size + 1)
        (paths[i % len(paths)] / f"file{i:06d}.dat").write_bytes(pool[off : off + size])
        total += size
    if big_bytes:
        with open(root / "big.bin", "wb") as f:
            left, n = big_bytes, 0
            while left:
                chunk = pool[: min(left, len(pool))]
                f.write(n.to_bytes(8, "little") + chunk[8:] if len(chunk) > 8 else chunk)
                left -= len(chunk)
                n += 1
        total += big_bytes
    (root / "empty-dir").mkdir(exist_ok=True)
    for name, target in (("link-to-file", "dir0000/file000001.dat"), ("link-to-dir", "dir0000"),
                         ("dangling-link", "no/such/target")):
        if not os.path.lexists(root / name):
            os.symlink(target, root / name)
    return total
