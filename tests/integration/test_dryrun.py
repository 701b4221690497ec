"""A dry run lists what rsync -ani --delete lists: a table of tree differences, each made on a copy of one tree,
compared by category (created, updated, deleted) with rsync itself; and the destination is left exactly as it
was (every entry's type, mode, size, mtime, content and link target, directories' mtimes included).

The plan comes from zcrepl's receiver (PlanWriter behind LocalCopy, the scan and TreeWriter path a network
receiver uses too); tests/integration/test_dryrun_cluster.py runs it through the controller and zc-ctl.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from treesnap import snapshot

from zcrepl.agent.transfer.local import LocalCopy
from zcrepl.agent.transfer.saferoot import SafeRoot
from zcrepl.core.filters import from_arg
from zcrepl.core.types import PLAN_LISTED, JobOptions, PlanItem

RSYNC = shutil.which("rsync")
pytestmark = pytest.mark.skipif(RSYNC is None, reason="rsync is not installed")

T0 = 1_600_000_000  # whole seconds: rsync and zcrepl compare the same mtimes
DIR_T = 1_650_000_000
FILES = ["top.txt", "a/one.txt", "a/two.bin", "a/b/deep.txt", "c/keep.txt", "c/d/e/f.txt", "m/x.txt", "t/file",
         "z.o"]
DIRS = ["empty", "a/b/c"]
LINKS = {"ln": "top.txt", "a/up": "../top.txt"}


def _base(root: Path) -> None:
    root.mkdir(parents=True)
    for i, rel in enumerate(FILES):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(f"{rel}:{'x' * (i * 13 % 40)}\n".encode())
        os.utime(p, (T0 + i, T0 + i))
    for d in DIRS:
        (root / d).mkdir(parents=True, exist_ok=True)
    for name, target in LINKS.items():
        os.symlink(target, root / name)
        os.utime(root / name, (T0, T0), follow_symlinks=False)


def _write(p: Path, data: bytes, t: int = T0 + 500) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    os.utime(p, (t, t))


def _relink(p: Path, target: str) -> None:
    if p.is_symlink() or p.is_file():
        p.unlink()
    elif p.is_dir():
        shutil.rmtree(p)
    os.symlink(target, p)
    os.utime(p, (T0, T0), follow_symlinks=False)


Change = Callable[[Path, Path], None]  # (source, destination)

# (name, change to the copies, extra rsync/zcrepl options: checksum, exclude pattern)
CASES: list[tuple[str, Change, dict[str, object]]] = [
    ("nothing", lambda s, d: None, {}),
    ("new-file", lambda s, d: _write(s / "a/new.txt", b"new"), {}),
    ("new-tree", lambda s, d: (_write(s / "n/x/y.txt", b"y"), _write(s / "n/z.txt", b"z")), {}),
    ("new-empty-dir", lambda s, d: (s / "a/fresh").mkdir(), {}),
    ("size", lambda s, d: _write(d / "a/one.txt", b"shorter", T0 + 1), {}),
    ("mtime", lambda s, d: os.utime(d / "a/two.bin", (T0 + 99, T0 + 99)), {}),
    ("mode", lambda s, d: os.chmod(d / "c/keep.txt", 0o600), {}),
    ("content-same-size", lambda s, d: _write(d / "top.txt", b"X" + (s / "top.txt").read_bytes()[1:], T0), {}),
    ("content-checksum", lambda s, d: _write(d / "top.txt", b"X" + (s / "top.txt").read_bytes()[1:], T0),
     {"checksum": True}),
    ("mtime-checksum", lambda s, d: os.utime(d / "a/two.bin", (T0 + 99, T0 + 99)), {"checksum": True}),
    ("link-target", lambda s, d: _relink(d / "ln", "a/one.txt"), {}),
    ("new-link", lambda s, d: _relink(s / "c/newlink", "../top.txt"), {}),
    ("extra-file", lambda s, d: _write(d / "a/extra.txt", b"e"), {}),
    ("extra-tree", lambda s, d: (_write(d / "gone/sub/x.txt", b"x"), _write(d / "gone/y.txt", b"y"),
                                 (d / "gone/emptysub").mkdir()), {}),
    ("extra-link", lambda s, d: _relink(d / "a/b/stale", "nowhere"), {}),
    ("file-becomes-dir", lambda s, d: (os.unlink(s / "t/file"), _write(s / "t/file/inside.txt", b"i")), {}),
    ("dir-becomes-file", lambda s, d: (shutil.rmtree(s / "c/d"), _write(s / "c/d", b"now a file")), {}),
    ("file-becomes-link", lambda s, d: _relink(s / "m/x.txt", "../top.txt"), {}),
    ("link-becomes-file", lambda s, d: (os.unlink(s / "ln"), _write(s / "ln", b"plain")), {}),
    ("excluded-extra-kept", lambda s, d: (_write(d / "extra.o", b"o"), _write(d / "extra.txt", b"t")),
     {"exclude": "*.o"}),
    ("deep-new", lambda s, d: _write(s / "a/b/c/d/e/f/g.txt", b"g"), {}),
    ("mixed", lambda s, d: (_write(s / "a/new.txt", b"n"), _write(d / "a/one.txt", b"longer than before"),
                            _write(d / "zz.txt", b"z"), os.chmod(d / "m/x.txt", 0o640)), {}),
]
# Directory differences, set after every directory's mtime was made equal on both sides.
DIR_CASES: list[tuple[str, Change]] = [
    ("dir-mtime", lambda s, d: os.utime(d / "a/b", (DIR_T + 5, DIR_T + 5))),
    ("dir-mode", lambda s, d: os.chmod(d / "c", 0o700)),
    ("root-mtime", lambda s, d: os.utime(d, (DIR_T + 5, DIR_T + 5))),
]


def _same_dir_times(*roots: Path) -> None:
    for root in roots:
        for dirpath, _dirs, _files in os.walk(root):
            os.utime(dirpath, (DIR_T, DIR_T))


def rsync_plan(src: Path, dst: Path, opts: dict[str, object]) -> dict[str, set[str]]:
    """rsync -ani --delete's itemized list, by category."""
    assert RSYNC is not None
    args = [RSYNC, "-ani", "--delete", "--out-format=%i\t%n"]
    if opts.get("checksum"):
        args.append("--checksum")
    if opts.get("exclude"):
        args.append(f"--exclude={opts['exclude']}")
    out = subprocess.run([*args, f"{src}/", f"{dst}/"], check=True, capture_output=True, text=True).stdout
    plan: dict[str, set[str]] = {"created": set(), "updated": set(), "deleted": set()}
    for line in out.splitlines():
        code, tab, name = line.partition("\t")
        if not tab:
            continue  # "created directory ..." and other notes
        path = name.rstrip("/")
        path = "" if path == "." else path
        if code.startswith("*deleting"):
            plan["deleted"].add(path)
        elif code[2:] == "+++++++++":
            plan["created"].add(path)
        else:
            plan["updated"].add(path)
    return plan


def zc_plan(src: Path, dst: Path, opts: dict[str, object]) -> tuple[list[PlanItem], dict[str, int]]:
    rules = ()
    if opts.get("exclude"):
        rule = from_arg(str(opts["exclude"]), include=False)
        assert rule is not None
        rules = (rule,)
    options = JobOptions(delete=True, dry_run=True, checksum=bool(opts.get("checksum")), filters=rules)
    with SafeRoot(os.fsencode(src)) as s, SafeRoot(os.fsencode(dst.parent)) as d:
        copier = LocalCopy(1, s, d, (os.fsencode(dst.name),), options, "dst", threading.Event(),
                           lambda _stats: None)
        stats = copier.run()
    totals = {"created": stats.plan_created, "updated": stats.plan_updated, "deleted": stats.plan_deleted,
              "files": stats.plan_files, "bytes": stats.plan_bytes, "done": stats.files_done + stats.bytes_done}
    return list(copier.plan), totals


def by_category(items: list[PlanItem]) -> dict[str, set[str]]:
    plan: dict[str, set[str]] = {"created": set(), "updated": set(), "deleted": set()}
    for x in items:
        plan[x.change].add(os.fsdecode(x.path))
    return plan


def _pair(tmp: Path, name: str) -> tuple[Path, Path]:
    src, dst = tmp / name / "src", tmp / name / "dst"
    _base(src)
    assert RSYNC is not None
    subprocess.run([RSYNC, "-a", f"{src}/", f"{dst}/"], check=True)
    return src, dst


def test_plan_equals_rsync_itemize(tmp_path: Path) -> None:
    """Every case of both tables: the same paths in each category as rsync -ani --delete."""
    mismatches = []
    empty = []
    cases = [(n, c, o, None) for n, c, o in CASES] + [(n, lambda s, d: None, {}, c) for n, c in DIR_CASES]
    for name, change, opts, dir_change in cases:
        src, dst = _pair(tmp_path, name)
        change(src, dst)
        _same_dir_times(src, dst)
        if dir_change is not None:
            dir_change(src, dst)
        before = snapshot(dst)
        want = rsync_plan(src, dst, opts)
        items, totals = zc_plan(src, dst, opts)
        got = by_category(items)
        if not any(want.values()):
            empty.append(name)
        if got != want:
            mismatches.append(f"{name}: rsync {want}, zcrepl {got}")
        assert snapshot(dst) == before, f"{name}: the dry run changed the destination"
        assert totals["done"] == 0
        assert (totals["created"], totals["updated"], totals["deleted"]) == tuple(len(got[k]) for k in got)
    assert not mismatches, "\n".join(mismatches)
    assert len(cases) >= 25
    assert empty == ["nothing", "content-same-size"]  # the table compares real plans, not empty ones


def test_plan_reasons_and_totals(tmp_path: Path) -> None:
    """Why each update happens, and what would move: the bytes of created files and of files that fail the
    quick check; a metadata-only change moves none."""
    src, dst = _pair(tmp_path, "why")
    _write(src / "a/new.txt", b"12345")
    _write(dst / "a/one.txt", b"shorter", T0 + 1)
    os.utime(dst / "a/two.bin", (T0 + 99, T0 + 99))
    os.chmod(dst / "c/keep.txt", 0o600)
    _relink(dst / "ln", "a/one.txt")
    _write(dst / "old.txt", b"old")
    _same_dir_times(src, dst)
    items, totals = zc_plan(src, dst, {})
    why = {os.fsdecode(x.path): (x.change, x.why, x.size) for x in items}
    one, two = (src / "a/one.txt").stat().st_size, (src / "a/two.bin").stat().st_size
    assert why == {"a/new.txt": ("created", (), 5), "a/one.txt": ("updated", ("size",), one),
                   "a/two.bin": ("updated", ("mtime",), two), "c/keep.txt": ("updated", ("mode",), 0),
                   "ln": ("updated", ("target",), 0), "old.txt": ("deleted", (), 0)}
    assert [x.target for x in items if x.path == b"ln"] == [b"top.txt"]
    assert (totals["files"], totals["bytes"]) == (3, 5 + one + two)


def test_missing_destination_is_planned_not_created(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _base(src)
    dst = tmp_path / "not-yet"
    want = rsync_plan(src, dst, {})
    assert not dst.exists()  # rsync -n doesn't create it either
    items, totals = zc_plan(src, dst, {})
    assert not dst.exists()
    got = by_category(items)
    assert got["created"] == want["created"] and not got["updated"] and not got["deleted"]
    assert totals["bytes"] == sum((src / f).stat().st_size for f in FILES)


def test_a_large_plan_is_capped_and_counted_whole(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(PLAN_LISTED + 20):
        (src / f"f{i:05d}").write_bytes(b"")
    items, totals = zc_plan(src, tmp_path / "dst", {})
    assert len(items) == PLAN_LISTED
    assert totals["created"] == PLAN_LISTED + 21 and totals["files"] == PLAN_LISTED + 20  # the root too
