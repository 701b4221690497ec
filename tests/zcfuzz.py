"""Shared pieces of the fuzz tests: hypothesis profiles, hostile-input strategies and confinement guards.

Profiles, chosen with ``ZC_FUZZ_PROFILE``:

- ``ci`` (default): small budgets, derandomized, so the default suite is fast and runs the same examples
  every time (a red build is never a fluke of the seed);
- ``campaign``: random seeds and ``ZC_FUZZ_SCALE`` (default 50) times the budgets; ``scripts/fuzz.py``
  runs it in rounds and reports examples per target.

Hypothesis never writes into the checkout: no example database (``database=None``), and its caches (source
constants, unicode tables) go to the temp dir.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Before hypothesis looks for its storage directory (it does so lazily, on first use).
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "zcrepl-hypothesis"))

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from zcrepl.agent.transfer import frame as fr
from zcrepl.agent.transfer import opsframe as opf
from zcrepl.agent.transfer.frame import Entry, Kind
from zcrepl.agent.transfer.saferoot import MAX_DEPTH, MAX_PATH, validate_name
from zcrepl.core.errors import UnsafePath

_COMMON: dict[str, Any] = {
    "database": None,
    "deadline": None,  # wall-clock limits flake on a shared 2-core machine; bounds are checked structurally
    "print_blob": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
settings.register_profile("ci", derandomize=True, max_examples=100, **_COMMON)
settings.register_profile("campaign", derandomize=False, max_examples=5000, **_COMMON)
PROFILE = os.environ.get("ZC_FUZZ_PROFILE", "ci")
settings.load_profile(PROFILE)
SCALE = int(os.environ.get("ZC_FUZZ_SCALE", "50")) if PROFILE == "campaign" else 1


def budget(examples: int) -> settings:
    """Settings for one target: ``examples`` in the ci profile, SCALE times that in a campaign."""
    return settings(max_examples=examples * SCALE)


# ------------------------------------------------------------------------------------------ integers

U8 = st.integers(0, 0xFF)
U16 = st.integers(0, 0xFFFF)
U32 = st.integers(0, 0xFFFF_FFFF)
U64 = st.integers(0, 2**64 - 1)
I64 = st.integers(-(2**63), 2**63 - 1)


def extremes(width: int) -> st.SearchStrategy[int]:
    """Values of a ``width``-byte unsigned field that break sloppy bounds checks, or any value."""
    top = 1 << (8 * width)
    edges = [0, 1, 2, top - 1, top - 2, top >> 1, (top >> 1) - 1, fr.MAX_FRAME, fr.MAX_BATCH + 1]
    return st.one_of(st.sampled_from([v for v in edges if v < top]), st.integers(0, top - 1))


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes], max_edits: int = 3) -> bytes:
    """A valid encoding with a few edits: bit flips, extreme values poked into fields, cuts, insertions,
    deletions and duplicated slices (rsync's "encode a good entry, then flip one field")."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(0, max_edits))):
        op = draw(st.sampled_from(["flip", "poke", "cut", "insert", "delete", "dup"]))
        i = draw(st.integers(0, len(data)))
        if op == "flip" and data:
            data[i % len(data)] ^= 1 << draw(st.integers(0, 7))
        elif op == "poke":
            width = draw(st.sampled_from([1, 2, 4, 8]))
            data[i : i + width] = draw(extremes(width)).to_bytes(width, "big")
        elif op == "cut":
            del data[i:]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 8))]
        else:
            data[i:i] = data[i : i + draw(st.integers(1, 16))]
    return bytes(data)


# ------------------------------------------------------------------------------------------ names

OUTSIDE = b"@OUTSIDE@"
"""Stands for the absolute path of the example's ``outside`` directory (filled in by ``Arena.resolve``)."""

GOOD_NAMES = [b"a", b"b", b"c", b"f", b"planted", b"plink", b"pdir", b"pfile", b"hlink", b"inner", b"x" * 255,
              b"new\nline", b"\xff\xfe", b" ", b"-rf", b"caf\xc3\xa9", b"..x", b".hidden", b"zc.not-ours"]
BAD_NAMES = [b"..", b".", b"", b".zc.x", b".zc.partial", b".zc.f.0badc0de.tmp", b"y" * 256, b"nul\0x", b"a/b"]
HOSTILITY = st.sampled_from([0, 0, 3, 10, 40])
"""Per example, the percentage of choices that go hostile: mostly sane sessions reach the deep code."""


def _made_good(raw: bytes) -> bytes:
    """Any bytes turned into a name the rules accept (so no draw is ever thrown away)."""
    name = raw.replace(b"/", b"_").replace(b"\0", b"_") or b"_"
    try:
        return validate_name(name)
    except UnsafePath:
        return b"n" + name[:250]


good_names = st.one_of(st.sampled_from(GOOD_NAMES), st.binary(min_size=1, max_size=6).map(_made_good))
bad_names = st.one_of(st.sampled_from(BAD_NAMES), st.binary(max_size=6))
names = st.one_of(good_names, bad_names)


def roll(draw: st.DrawFn, percent: int) -> bool:
    """True with about ``percent``% likelihood (and shrinking towards False)."""
    return percent > 0 and draw(st.integers(0, 99)) < percent


@st.composite
def hostile_paths(draw: st.DrawFn, creatable: bool = False) -> bytes:
    """Relative paths built from the vocabulary, and the classic escapes and malformations.

    ``creatable``: for a rename's target, whose parents the receiver creates. Its long and deep forms stay
    walkable by the checks here (full paths under PATH_MAX, depth under Python's recursion limit); the
    others reach MAX_PATH and MAX_DEPTH."""
    path = b"/".join(draw(st.lists(names, min_size=1, max_size=4)))
    form = draw(st.sampled_from(["plain"] * 5 + ["abs", "trail", "double", "up", "outside", "long", "deep"]))
    if form == "abs":
        return b"/" + path
    if form == "trail":
        return path + b"/"
    if form == "double":
        return path.replace(b"/", b"//", 1) if b"/" in path else b"a//" + path
    if form == "up":
        return b"../" * draw(st.integers(1, 3)) + path
    if form == "outside":
        return OUTSIDE + b"/" + path
    # Up to MAX_PATH (65535): a name's length on the wire is a u16, so nothing longer can be sent at all.
    if form == "long":
        return b"/".join([b"d" * 200] * draw(st.integers(15, 19) if creatable else
                                             st.integers(MAX_PATH // 201 - 1, MAX_PATH // 201)))
    if form == "deep":
        return b"/".join([b"d"] * draw(st.integers(255, 300) if creatable else st.integers(MAX_DEPTH - 1, MAX_DEPTH)))
    return path


link_targets = st.one_of(
    st.sampled_from([b"../../outside", b"../../outside/precious", OUTSIDE, OUTSIDE + b"/precious", b"/", b".",
                     b"..", b"", b"a\0b", b"f", b"pdir/inner", b"t" * fr.MAX_TARGET]),
    hostile_paths(),
)

XATTR_KEYS = [b"user.a", b"user.zc", b"user.\0nul", b"security.capability", b"trusted.t",
              b"system.posix_acl_access", b"user." + b"k" * 250, b"", b"k" * 256, b"user"]
xattr_lists = st.lists(st.tuples(st.one_of(st.sampled_from(XATTR_KEYS), st.binary(min_size=1, max_size=8)),
                                 st.binary(max_size=32)), max_size=3)


@st.composite
def xattr_blobs(draw: st.DrawFn, hostile: int = 10) -> bytes:
    """What an entry's ``xattrs`` field carries: well framed, or for ``hostile``% malformed."""
    attrs = draw(xattr_lists)
    blob = b"".join(len(k).to_bytes(2, "big") + len(v).to_bytes(4, "big") + k + v for k, v in attrs)
    return draw(mutated(st.just(blob), 2)) if roll(draw, hostile) else blob


MODES = st.one_of(st.sampled_from([0o644, 0o755, 0o600, 0, 0o7777, 0o4755, 0xFFFF_FFFF, 0o170777]), U32)
MTIMES = st.one_of(st.sampled_from([0, 1, -1, 946_684_800_123_456_789, -(1 << 62), 2**63 - 1]), I64)
IDS = st.sampled_from([0, 1000, 65534, 2**31, 2**32 - 2, 2**32 - 1])


# ------------------------------------------------------------------------------------------ manifests


@st.composite
def entries_for(draw: st.DrawFn, kind: Kind, path: bytes, earlier: list[bytes], hostile: int = 10) -> Entry:
    """One structurally valid entry (it survives ``decode_entries``): metadata and link targets are hostile
    throughout (the receiver must take any of them), xattrs and hard-link targets ``hostile``% of the time."""
    mode, mtime = draw(MODES), draw(st.integers(-(1 << 62), 2**63 - 1) | st.sampled_from([0, -(1 << 62)]))
    uid, gid = draw(IDS), draw(IDS)
    xattrs = draw(xattr_blobs(hostile)) if draw(st.booleans()) else b""
    if kind is Kind.FILE:
        size = draw(st.integers(0, 48))
        digest = draw(st.sampled_from([b"", b"\0" * 16]) | st.binary(min_size=16, max_size=16))
        flags = draw(st.sampled_from([0, 0, fr.F_SPARSE, fr.F_UNREADABLE]))
        if path.endswith(b"hlink") and draw(st.booleans()):  # "up to date" with the planted hard link
            size, mtime = len(PRECIOUS), PRECIOUS_MTIME
        return Entry(kind, path, mode, mtime, size, b"", digest, uid, gid, flags, xattrs)
    target = b""
    if kind is Kind.SYMLINK:
        target = draw(link_targets)
    elif kind is Kind.HARDLINK:
        target = draw(hostile_paths()) if roll(draw, hostile) or not earlier else draw(st.sampled_from(earlier))
    flags = 0 if kind is Kind.HARDLINK else draw(st.sampled_from([0, 0, 0, fr.F_UNREADABLE]))
    return Entry(kind, path, mode, mtime, 0, target, b"", uid, gid, flags, xattrs)


ROOT = Entry(Kind.DIR, b"", 0o755, 946_684_800_000_000_000)
PRECIOUS = b"keep me"
PRECIOUS_MTIME = 946_684_800_123_456_789


@st.composite
def manifests(draw: st.DrawFn, hostile: int = 10, max_entries: int = 10) -> list[Entry]:
    """A manifest that is well formed (the root first, parents before children, no duplicates) but for
    ``hostile``% of its choices: hostile names, raw hostile paths, duplicates, children of non-directories,
    a missing root. Metadata and link targets are hostile throughout."""
    first = ROOT
    if roll(draw, hostile // 4):
        first = draw(st.sampled_from([ROOT._replace(kind=Kind.FILE), ROOT._replace(path=b"a")]))
    out = [first]
    dirs: list[bytes] = [b""]
    files: list[bytes] = []
    seen = {b""}
    for _ in range(draw(st.integers(0, max_entries))):
        if roll(draw, hostile // 3):
            path = draw(hostile_paths())
        elif roll(draw, hostile // 3) and len(out) > 1:
            path = draw(st.sampled_from(out[1:])).path  # a duplicate, or a child of a non-directory below
            path = path if draw(st.booleans()) else path + b"/" + draw(good_names)
        else:
            parent = draw(st.sampled_from(dirs))
            leaf = draw(bad_names if roll(draw, hostile // 3) else good_names)
            path = parent + b"/" + leaf if parent else leaf
            while path in seen:
                path += b"_"
        path = path[:0xFFFF]  # a name's length travels as a u16
        kinds = [Kind.FILE, Kind.FILE, Kind.DIR, Kind.DIR, Kind.SYMLINK] + ([Kind.HARDLINK] if files else [])
        kind = draw(st.sampled_from(kinds))
        out.append(draw(entries_for(kind, path, files, hostile)))
        seen.add(path)
        if kind is Kind.DIR:
            dirs.append(path)
        elif kind is Kind.FILE:
            files.append(path)
    return out


PLAUSIBLE = [b"planted", b"plink", b"pdir", b"pdir/inner", b"pdir/esc", b"pfile", b"hlink", b"a", b"b", b"new",
             b"pdir/new", b"a/b", b"new/deeper/still"]
plausible_paths = st.one_of(st.sampled_from(PLAUSIBLE), st.lists(good_names, min_size=1, max_size=3).map(b"/".join))


@st.composite
def change_lists(draw: st.DrawFn, hostile: int = 10, max_ops: int = 8) -> list[opf.Op]:
    """Renames and deletes of paths the arena has (or nearly), and for ``hostile``% of them: escapes and
    malformed paths, renames into themselves, onto an ancestor, to the root, of the root."""
    ops = []
    for _ in range(draw(st.integers(0, max_ops))):
        a = draw(hostile_paths() | st.just(b"") if roll(draw, hostile) else plausible_paths)
        if draw(st.booleans()):
            ops.append(opf.Op(opf.OP_DELETE, a))
            continue
        if roll(draw, hostile):
            b = draw(st.one_of(hostile_paths(creatable=True), st.sampled_from([a, a + b"/sub", b""])))
        else:
            parent = a.rpartition(b"/")[0]
            b = draw(st.one_of(plausible_paths, st.just(parent) if parent else plausible_paths))
        ops.append(opf.Op(opf.OP_RENAME, a, b[:0xFFFF]))  # a name's length travels as a u16
    return ops


# ------------------------------------------------------------------------------------------ the arena


def _fingerprint(path: bytes) -> tuple[Any, ...]:
    st_ = os.lstat(path)
    extra: Any
    if stat.S_ISLNK(st_.st_mode):
        extra = os.readlink(path)
    elif stat.S_ISREG(st_.st_mode):
        with open(path, "rb") as f:
            extra = hashlib.sha256(f.read()).hexdigest()
    else:
        extra = None
    try:
        xattrs = sorted((k, os.getxattr(path, k, follow_symlinks=False))
                        for k in os.listxattr(path, follow_symlinks=False))
    except OSError:
        xattrs = []
    mtime = None if stat.S_ISDIR(st_.st_mode) else st_.st_mtime_ns  # a directory's own entries are checked
    # Not st_nlink: replacing or deleting dst/hlink rightly drops the link count of outside/precious.
    return (st_.st_mode, st_.st_uid, st_.st_gid, st_.st_size, st_.st_ino, mtime, extra, xattrs)


def tree_state(top: bytes, skip: bytes | None = None) -> dict[bytes, tuple[Any, ...]]:
    """Every entry under ``top`` (and ``top`` itself) with type, mode, owner, size, links, inode, mtime,
    content hash or link target, and extended attributes; ``skip`` (a directory) is left out."""
    out = {top: _fingerprint(top)}
    for dirpath, dirnames, filenames in os.walk(top):
        if skip is not None and dirpath == skip:
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            if full != skip:
                out[full] = _fingerprint(full)
    return out


def open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


class Arena:
    """A fresh directory per example, laid out like an agent's disk::

        outside/                 precious data the receiver must never touch
            precious, sub/x, link -> precious
        export/                  the export root
            sibling/data         another job's tree next to ours
            dst/                 the job root, with planted traps:
                planted -> ../../outside       plink -> <abs outside>
                pdir/inner       pdir/esc -> ../../../outside      pfile ("old", an old mtime)
                hlink            a hard link to outside/precious

    ``check()`` asserts that everything but ``dst`` is exactly as it was (content, mode, owner, mtime,
    inode, xattrs) and that no temp file (``.zc.*``) is left anywhere.
    """

    def __init__(self, base: Path) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="arena-", dir=base))
        b = os.fsencode(self.dir)
        self.outside = os.path.join(b, b"outside")
        self.export = os.path.join(b, b"export")
        self.dst = os.path.join(self.export, b"dst")
        os.makedirs(os.path.join(self.outside, b"sub"))
        _write(os.path.join(self.outside, b"precious"), PRECIOUS)
        os.utime(os.path.join(self.outside, b"precious"), ns=(PRECIOUS_MTIME, PRECIOUS_MTIME))
        _write(os.path.join(self.outside, b"sub", b"x"), b"x")
        os.symlink(b"precious", os.path.join(self.outside, b"link"))
        os.makedirs(os.path.join(self.export, b"sibling"))
        _write(os.path.join(self.export, b"sibling", b"data"), b"sibling")
        os.makedirs(os.path.join(self.dst, b"pdir"))
        os.symlink(b"../../outside", os.path.join(self.dst, b"planted"))
        os.symlink(self.outside, os.path.join(self.dst, b"plink"))
        _write(os.path.join(self.dst, b"pdir", b"inner"), b"inner")
        os.symlink(b"../../../outside", os.path.join(self.dst, b"pdir", b"esc"))
        _write(os.path.join(self.dst, b"pfile"), b"old")
        os.utime(os.path.join(self.dst, b"pfile"), ns=(946_684_800_000_000_000, 946_684_800_000_000_000))
        os.link(os.path.join(self.outside, b"precious"), os.path.join(self.dst, b"hlink"))
        self._before = tree_state(b, skip=self.dst)

    def resolve(self, value: bytes) -> bytes:
        return value.replace(OUTSIDE, self.outside)

    def check(self) -> None:
        after = tree_state(os.fsencode(self.dir), skip=self.dst)
        changed = sorted(k for k in set(self._before) | set(after) if self._before.get(k) != after.get(k))
        assert not changed, f"changed outside the job root: {changed}"
        temps = [os.path.join(d, n) for d, ds, fs in os.walk(self.dir) for n in ds + fs
                 if os.fsencode(n).startswith(b".zc.")]
        assert not temps, f"temp files left behind: {temps}"

    def remove(self) -> None:
        for dirpath, dirnames, _ in os.walk(self.dir):  # a hostile manifest may leave 0o000 directories
            for d in dirnames:
                full = os.path.join(dirpath, d)
                if not os.path.islink(full):
                    os.chmod(full, 0o700)
        shutil.rmtree(self.dir)


def _write(path: bytes, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


@contextmanager
def arena(base: Path) -> Iterator[Arena]:
    """An Arena that is always removed; the confinement check runs only when the body succeeded."""
    a = Arena(base)
    try:
        yield a
        a.check()
    finally:
        a.remove()

