"""Filters equal rsync's: the same generated tree, the same rules, rsync itself and zcrepl's transfer code
(scan + receiver, in process through LocalCopy), and the destination trees compared by an independent walk.

Each case runs without --delete, with --delete (a destination already holding extras, some of them excluded,
some inside directories the source lacks) and, for some, with --delete-excluded.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from zcrepl.agent.transfer.local import LocalCopy
from zcrepl.agent.transfer.saferoot import SafeRoot
from zcrepl.core.filters import collapse, from_arg
from zcrepl.core.types import JobOptions

RSYNC = shutil.which("rsync")
pytestmark = pytest.mark.skipif(RSYNC is None, reason="rsync is not installed")

# (name, rules as --exclude/--include arguments in order: ("-", pattern) or ("+", pattern))
CASES: list[tuple[str, list[tuple[str, str]]]] = [
    ("suffix", [("-", "*.o")]),
    ("dir-only", [("-", "build/")]),
    ("anchored", [("-", "/build")]),
    ("name-any-kind", [("-", "build")]),
    ("only-c-files", [("+", "*/"), ("+", "*.c"), ("-", "*")]),
    ("one-subtree", [("+", "/src/***"), ("-", "*")]),
    ("infix-starstar", [("-", "src/**/tmp")]),
    ("starstar-dir", [("-", "**/cache/")]),
    ("two-components", [("-", "a/b")]),
    ("star-component", [("-", "a/*/c")]),
    ("question", [("-", "?.txt")]),
    ("class", [("-", "[ab]*")]),
    ("negated-range", [("-", "[!a-m]*.log")]),
    ("named-class", [("-", "*[[:digit:]]*")]),
    ("include-first-wins", [("+", "keep.o"), ("-", "*.o")]),
    ("dotfiles", [("-", ".*")]),
    ("anchored-wild", [("-", "/docs/*.md")]),
    ("starstar-suffix", [("-", "**.tmp")]),
    ("trailing-starstar", [("-", "src/**")]),
    ("anchored-star", [("-", "/src/*")]),
    ("escaped-bracket", [("-", "*\\[x\\]*")]),
    ("space-in-name", [("-", "dir with space/")]),
    ("deep-include", [("+", "/a/"), ("+", "/a/b/"), ("+", "/a/b/**"), ("-", "*")]),
    ("all-dirs", [("-", "*/")]),
    ("top-dirs", [("-", "/*/")]),
    ("wild-both", [("-", "a*/b*")]),
    ("depth-two", [("-", "*/*/*.c")]),
    ("symlink", [("-", "link")]),
    ("unclosed-class", [("-", "[unclosed")]),
    ("triple-star", [("-", "src/***")]),
    ("starstar-triple", [("-", "**/lib/***")]),
    ("include-then-dir", [("+", "*.log"), ("-", "logs/")]),
    ("old-prefix", [("-", "+ keep.o"), ("-", "*.o")]),
    ("clear", [("-", "*.c"), ("-", "!"), ("-", "*.h")]),
    ("starstar-prefix-file", [("-", "**/x.c")]),
    ("literal-slash", [("-", "src/lib")]),
]

FILES = [
    "top.c", "top.h", "keep.o", "junk.o", "a.txt", "ab.txt", "1.txt", "notes.log", "zeta.log", "v2.bin",
    ".hidden", ".config/rc", "build", "link-target",
    "src/main.c", "src/main.o", "src/x.c", "src/tmp", "src/lib/util.c", "src/lib/util.o", "src/lib/tmp/t.c",
    "src/deep/er/tmp", "src/deep/er/x.c", "src/build/out.o", "src/cache/c1", "src/a.tmp", "src/lib/b.tmp",
    "docs/readme.md", "docs/guide/intro.md", "docs/img[x]1.png", "docs/x.c",
    "a/b", "a/c/c", "a/x/c", "a/b2/c", "ab/bc.c", "ab/cd/x.c",
    "build2/build/out.o", "build2/keep.c", "nested/build/deep.o", "nested/cache/k", "nested/lib/l.c",
    "logs/app.log", "logs/other.txt", "dir with space/f", "x/y/z/w.c", "m/lib",
]
EMPTY_DIRS = ["empty", "src/empty", "lib"]
# Already at the destination before the transfer: extras the source lacks (deleted or protected).
DEST_EXTRAS = [
    "extra.o", "extra.txt", "gone/a.o", "gone/b.txt", "gone/sub/c.c", "gone/cache/k", "src/old.c", "src/old.o",
    "src/lib/stale.tmp", "build/leftover", "logs/old.log", ".dotextra", "a/b3/c", "nested/cache/old",
]


def _populate(root: Path, rels: list[str], salt: str) -> None:
    for i, rel in enumerate(rels):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(f"{salt}:{rel}:{'z' * (i * 7 % 50)}\n".encode())
        os.utime(p, ns=(1_600_000_000_000_000_000 + i, 1_600_000_000_000_000_000 + i * 1000))


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("filters") / "src"
    src.mkdir()
    _populate(src, FILES, "src")
    for d in EMPTY_DIRS:
        (src / d).mkdir(parents=True, exist_ok=True)
    os.symlink("link-target", src / "link")
    os.symlink("../top.c", src / "src" / "uplink")
    return src


def _rules(case: list[tuple[str, str]]) -> list[str]:
    out = []
    for sign, pat in case:
        r = from_arg(pat, include=sign == "+")
        if r is not None:
            out.append(r)
    return collapse(out)


def _rsync_args(case: list[tuple[str, str]]) -> list[str]:
    return [f"--{'include' if sign == '+' else 'exclude'}={pat}" for sign, pat in case]


def _prepare(dst: Path, delete: bool) -> None:
    dst.mkdir()
    if delete:
        _populate(dst, DEST_EXTRAS, "dst")


def walk(root: Path) -> dict[str, tuple[object, ...]]:
    """Every entry below ``root``: kind, permission bits, and size, mtime and content or link target.
    Directory mtimes are left out (a directory the source lacks keeps whatever its deletions made it)."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, p.read_bytes())
    return out


def run_rsync(src: Path, dst: Path, case: list[tuple[str, str]], *flags: str) -> None:
    assert RSYNC is not None
    subprocess.run([RSYNC, "-a", *flags, *_rsync_args(case), f"{src}/", f"{dst}/"], check=True,
                   capture_output=True)


def run_zcrepl(src: Path, dst: Path, options: JobOptions) -> None:
    with SafeRoot(os.fsencode(src)) as s, SafeRoot(os.fsencode(dst)) as d:
        LocalCopy(1, s, d, (), options, "dst", threading.Event(), lambda _stats: None).run()


MODES = [("copy", ()), ("delete", ("--delete",))]


@pytest.mark.parametrize("mode,flags", MODES, ids=[m for m, _ in MODES])
def test_filters_equal_rsync(source: Path, tmp_path: Path, mode: str, flags: tuple[str, ...]) -> None:
    """Every case of the table, in one test per mode (one generated tree, two transfers per case)."""
    mismatches = []
    for name, case in CASES:
        a, b = tmp_path / f"{name}-rsync", tmp_path / f"{name}-zc"
        _prepare(a, bool(flags))
        _prepare(b, bool(flags))
        run_rsync(source, a, case, *flags)
        run_zcrepl(source, b, JobOptions(delete=bool(flags), filters=tuple(_rules(case))))
        want, got = walk(a), walk(b)
        if want != got:
            diff = sorted(set(want.items()) ^ set(got.items()), key=str)
            mismatches.append(f"{name} {case}: only rsync {sorted(set(want) - set(got))}, only zcrepl "
                              f"{sorted(set(got) - set(want))}, differing {diff[:4]}")
        shutil.rmtree(a)
        shutil.rmtree(b)
    assert not mismatches, "\n".join(mismatches)
    assert len(CASES) >= 25


DELETE_EXCLUDED = ["suffix", "dir-only", "starstar-dir", "only-c-files", "include-then-dir"]


def test_delete_excluded_equals_rsync(source: Path, tmp_path: Path) -> None:
    cases = dict(CASES)
    for name in DELETE_EXCLUDED:
        a, b = tmp_path / f"{name}-rsync", tmp_path / f"{name}-zc"
        _prepare(a, True)
        _prepare(b, True)
        run_rsync(source, a, cases[name], "--delete", "--delete-excluded")
        run_zcrepl(source, b, JobOptions(delete=True, delete_excluded=True, filters=tuple(_rules(cases[name]))))
        assert walk(a) == walk(b), name
