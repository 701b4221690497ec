"""The benchmark workloads W1-W6, W8-W9 and R1-R4 (real trees of this machine): their specs, deterministic
generation (cached by spec hash) and a tree summary used to check every tool's copy.

Same seed, same names, same bytes, same file mtimes. File contents are pseudo-random so nothing compresses
or dedups. Markers live outside the trees (``DATA/markers``) so they are never replicated.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import stat
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

GEN_VERSION = 1  # bump when a generator changes its output: cached trees are regenerated
SEED = 20240601
MiB = 1 << 20
KiB = 1 << 10
BASE_MTIME = 1_700_000_000  # fixed file mtimes keep the trees identical across regenerations
W4_MTIME = BASE_MTIME + 86_400  # differs from W1, so quick checks (size+mtime) see the change


@dataclass(frozen=True)
class Workload:
    """One workload: where its source lives, what a run does, and which tools take part."""

    name: str
    title: str
    source: str  # directory under DATA/src
    mode: str  # "fresh" (destination removed first), "delta" (holds W1's file), "nochange" (already synced)
    gen: dict[str, Any] = field(default_factory=dict)  # generator parameters; part of the cache key
    dirty: int = 0  # bytes another process leaves dirty on the destination filesystem before each run


def specs(quick: bool) -> dict[str, Workload]:
    """The six workloads; ``quick`` shrinks every size so the harness runs in well under a minute."""
    big = 64 * MiB if quick else 1024 * MiB
    large = [s // 16 for s in _LARGE_MIB] if quick else _LARGE_MIB
    w1 = {"kind": "bigfile", "size": big, "seed": SEED + 1}
    mid = 16 * MiB if quick else 256 * MiB
    dirt = 64 * MiB if quick else 2048 * MiB
    w8 = {"kind": "flat", "files": 300 if quick else 3000, "dirs": 3 if quick else 30, "min": 4 * KiB,
          "max": 4 * KiB, "nest": 1, "seed": SEED + 8}
    return {
        "W1": Workload("W1", f"one {_h(big)} file", "W1", "fresh", w1),
        "W2": Workload("W2", "20,000 x 4 KiB in 200 dirs" if not quick else "500 x 4 KiB in 10 dirs", "W2",
                       "fresh", {"kind": "flat", "files": 500 if quick else 20_000, "dirs": 10 if quick else 200,
                                 "min": 4 * KiB, "max": 4 * KiB, "nest": 1, "seed": SEED + 2}),
        "W3": Workload("W3", "mixed tree (large, medium, small, symlinks, empty dirs)", "W3", "fresh",
                       {"kind": "mixed", "large_mib": large, "medium": 10 if quick else 150,
                        "medium_min": MiB // 4, "medium_max": 5 * MiB // 2, "small": 300 if quick else 10_000,
                        "small_max": 16 * KiB, "dirs": 20 if quick else 300, "depth": 5,
                        "empty": 5 if quick else 20, "seed": SEED + 3}),
        "W4": Workload("W4", f"W1 with 1 MiB changed at {_h(big // 2)}", "W4", "delta",
                       {"kind": "changed", "base": w1, "offset": big // 2, "length": MiB, "seed": SEED + 4}),
        "W5": Workload("W5", "no-change re-sync of W2", "W2", "nochange", {}),
        "W8": Workload("W8", "3,000 x 4 KiB in 30 dirs" if not quick else "300 x 4 KiB in 3 dirs", "W8", "fresh",
                       w8),
        "W8D": Workload("W8D", f"W8 while another process writes {_h(dirt)} to the same filesystem", "W8",
                        "fresh", {}, dirty=dirt),
        "W9": Workload("W9", f"one {_h(mid)} file", "W9", "fresh", {"kind": "bigfile", "size": mid, "seed": SEED + 9}),
        **{name: Workload(name, f"real tree: a copy of {path}", name, "fresh",
                          {"kind": "copy", "path": path, "drop": "special,unreadable,escaping-links"})
           for name, path in REAL_TREES.items()},
        "W6": Workload("W6", "200,000 x 0-4 KiB in ~2,000 dirs" if not quick else "1,500 x 0-4 KiB in 30 dirs",
                       "W6", "fresh", {"kind": "flat", "files": 1500 if quick else 200_000,
                                       "dirs": 30 if quick else 2000, "min": 0, "max": 4 * KiB, "nest": 2,
                                       "seed": SEED + 6}),
    }


# Trees of the system as people keep them (C headers, time zones, locale data, package docs), copied into the
# benchmark's data directory at generation time: their contents are this machine's, never committed.
REAL_TREES = {"R1": "/usr/include", "R2": "/usr/share/zoneinfo", "R3": "/usr/share/locale", "R4": "/usr/share/doc"}

# 8 large files, 16-256 MiB, 720 MiB in total (like baselines.md T3)
_LARGE_MIB = [s * MiB for s in (16, 24, 40, 56, 80, 112, 136, 256)]


def _h(n: int) -> str:
    return f"{n // (1 << 30)} GiB" if n >= 1 << 30 and n % (1 << 30) == 0 else f"{n // MiB} MiB"


# -- generation -------------------------------------------------------------------------------------
def ensure(w: Workload, src_root: Path, markers: Path, log: Any = print) -> dict[str, Any]:
    """Generate ``w``'s source tree unless a marker with the same spec hash exists; returns its summary."""
    if not w.gen:  # W5 reuses W2's tree, W8D W8's
        raise ValueError(f"{w.name} has no tree of its own")
    digest = hashlib.sha256(json.dumps({"v": GEN_VERSION, **w.gen}, sort_keys=True).encode()).hexdigest()[:16]
    marker = markers / f"{w.source}.json"
    root = src_root / w.source
    if marker.exists() and root.is_dir():
        doc = json.loads(marker.read_text())
        if doc.get("hash") == digest:
            return dict(doc["summary"])
    log(f"generating {w.name} ({w.title}) in {root} ...")
    marker.unlink(missing_ok=True)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    kind = w.gen["kind"]
    if kind == "bigfile":
        _big_file(root / "big.bin", w.gen["size"], random.Random(w.gen["seed"]), BASE_MTIME)
    elif kind == "changed":
        _changed(root / "big.bin", w.gen, src_root)
    elif kind == "flat":
        _flat(root, w.gen)
    elif kind == "mixed":
        _mixed(root, w.gen)
    elif kind == "copy":  # cp -a keeps modes, mtimes and symlinks; what we may not read is left out
        root.rmdir()
        subprocess.run(["cp", "-a", w.gen["path"], str(root)], check=False, capture_output=True)
        _drop_unreadable(root)
    else:
        raise ValueError(kind)
    summary = tree_summary(root)
    markers.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps({"hash": digest, "spec": w.gen, "summary": summary}, indent=1))
    os.replace(tmp, marker)
    return summary


def _big_file(path: Path, size: int, rng: random.Random, mtime: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 4 * MiB)
            f.write(rng.randbytes(n))
            left -= n
    _set_mtime(path, mtime)


def _changed(path: Path, gen: dict[str, Any], src_root: Path) -> None:
    # Regenerate the base bytes rather than copying W1: no dependency on W1's cache state.
    base = gen["base"]
    _big_file(path, base["size"], random.Random(base["seed"]), W4_MTIME)
    with open(path, "r+b") as f:
        f.seek(gen["offset"])
        f.write(random.Random(gen["seed"]).randbytes(gen["length"]))
    _set_mtime(path, W4_MTIME)


def _flat(root: Path, gen: dict[str, Any]) -> None:
    """``files`` files spread evenly over ``dirs`` leaf directories (``nest`` levels)."""
    rng = random.Random(gen["seed"])
    pool = rng.randbytes(4 * MiB)
    ndirs = gen["dirs"]
    if gen["nest"] == 2:  # about sqrt(n) top directories, each with its share of leaves
        top = max(1, round(ndirs ** 0.5))
        leaves = [root / f"d{i % top:03d}" / f"s{i // top:03d}" for i in range(ndirs - top)]
    else:
        leaves = [root / f"d{i:03d}" for i in range(ndirs)]
    for d in leaves:
        d.mkdir(parents=True, exist_ok=True)
    for i in range(gen["files"]):
        size = rng.randint(gen["min"], gen["max"])
        off = rng.randrange(len(pool) - size + 1)
        p = leaves[i % len(leaves)] / f"f{i:06d}.dat"
        p.write_bytes(pool[off:off + size])
        _set_mtime(p, BASE_MTIME + i)


def _mixed(root: Path, gen: dict[str, Any]) -> None:
    """Nested directories up to ``depth`` deep, large/medium/small files, empty dirs and 12 symlinks
    (10 to files, one to a directory, one dangling)."""
    rng = random.Random(gen["seed"])
    dirs: list[tuple[Path, int]] = [(root, 0)]
    for i in range(gen["dirs"]):
        parent, depth = rng.choice([d for d in dirs if d[1] < gen["depth"]])
        dirs.append((parent / f"d{i:03d}", depth + 1))
        dirs[-1][0].mkdir()
    files: list[Path] = []

    def place(name: str, data_size: int, writer: Any) -> None:
        p = rng.choice(dirs)[0] / name
        writer(p, data_size)
        _set_mtime(p, BASE_MTIME + len(files))
        files.append(p)

    for i, size in enumerate(gen["large_mib"]):
        place(f"large{i}.bin", size, lambda p, n: _big_file(p, n, rng, BASE_MTIME))
    for i in range(gen["medium"]):
        place(f"medium{i:03d}.bin", rng.randint(gen["medium_min"], gen["medium_max"]),
              lambda p, n: p.write_bytes(rng.randbytes(n)))
    pool = rng.randbytes(4 * MiB)

    def small(p: Path, n: int) -> None:
        off = rng.randrange(len(pool) - n + 1)
        p.write_bytes(pool[off:off + n])

    for i in range(gen["small"]):
        place(f"small{i:05d}.dat", rng.randint(0, gen["small_max"]), small)
    for i in range(gen["empty"]):
        (rng.choice(dirs)[0] / f"empty{i:02d}").mkdir()
    # Symlinks at the top level with relative targets: 10 to files, one to a directory, one dangling.
    for i, target in enumerate(rng.sample(files, 10)):
        os.symlink(target.relative_to(root), root / f"link{i:02d}")
    os.symlink(dirs[-1][0].relative_to(root), root / "link-dir")
    os.symlink("no/such/target", root / "link-dangling")


def _drop_unreadable(root: Path) -> None:
    """Entries no tool can copy alike are removed: special files, unreadable ones, and symlinks that leave the
    tree (an rsync daemon without chroot rewrites those, so its copy would differ)."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            p = Path(dirpath) / name
            st = p.lstat()
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)) \
                    or (not stat.S_ISLNK(st.st_mode) and not os.access(p, os.R_OK)) \
                    or (stat.S_ISLNK(st.st_mode) and _leaves(root, p)):
                shutil.rmtree(p) if stat.S_ISDIR(st.st_mode) else p.unlink()


def _leaves(root: Path, link: Path) -> bool:
    target = os.readlink(link)
    return target.startswith("/") or os.path.normpath(os.path.join(os.path.relpath(link.parent, root),
                                                                     target)).startswith("..")


def _set_mtime(p: Path, secs: int) -> None:
    ns = secs * 1_000_000_000 + 123_456_789  # nanoseconds, so tools that round them show up
    os.utime(p, ns=(ns, ns))


# -- checking copies --------------------------------------------------------------------------------
SAMPLE = 64 * KiB


def tree_summary(root: Path, meta: bool = True) -> dict[str, Any]:
    """Counts, bytes and a digest over (path, type, size, mode, file mtime, link target, a 64 KiB sample
    from the middle of each file >= 1 MiB). Directory mtimes are left out; ``meta=False`` also drops
    modes and mtimes (the raw sender sets neither)."""
    h = hashlib.sha256()
    counts = {"files": 0, "dirs": 0, "symlinks": 0, "empty_dirs": 0, "bytes": 0}
    stack = [b""]
    broot = os.fsencode(root)
    while stack:
        rel = stack.pop()
        full = os.path.join(broot, rel) if rel else broot
        st = os.lstat(full)
        if stat.S_ISDIR(st.st_mode):
            counts["dirs"] += 1
            names = sorted(os.listdir(full))
            counts["empty_dirs"] += not names
            h.update(b"D%s\0%o\0" % (rel, stat.S_IMODE(st.st_mode) if meta else 0))
            stack.extend(os.path.join(rel, n) if rel else n for n in reversed(names))
        elif stat.S_ISLNK(st.st_mode):
            counts["symlinks"] += 1
            h.update(b"L%s\0%s\0" % (rel, os.readlink(full)))
        elif stat.S_ISREG(st.st_mode):
            counts["files"] += 1
            counts["bytes"] += st.st_size
            m = b"%o %d" % (stat.S_IMODE(st.st_mode), st.st_mtime_ns) if meta else b""
            h.update(b"F%s\0%d\0%s\0" % (rel, st.st_size, m))
            if st.st_size >= MiB:
                with open(full, "rb") as f:
                    f.seek(st.st_size // 2)
                    h.update(f.read(SAMPLE))
        else:
            h.update(b"S%s\0" % rel)
    entries = counts["files"] + counts["dirs"] + counts["symlinks"]
    return {**counts, "entries": entries, "digest": h.hexdigest()[:20]}


def describe(w: Workload) -> dict[str, Any]:
    return asdict(w)
