"""Tests for zcrepl.agent.transfer.scan: any depth, few fds, and every entry left out is reported."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from zchelpers import remove_deep, write_file

from zcrepl.agent.transfer import frame as fr
from zcrepl.agent.transfer.apply import TreeWriter
from zcrepl.agent.transfer.frame import Entry, Kind
from zcrepl.agent.transfer.saferoot import MAX_PATH, SafeRoot
from zcrepl.agent.transfer.scan import Scanner, Skips
from zcrepl.core.errors import UnsafePath
from zcrepl.core.filters import Filter
from zcrepl.core.types import SKIPPED_LISTED, JobOptions

NO_DAC = ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]


def chain(top: Path, names: list[bytes]) -> None:
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in names:
            os.mkdir(name, dir_fd=fd)
            os.close(os.open(b"f", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)


@pytest.fixture
def root(tmp_path: Path) -> Iterator[SafeRoot]:
    (tmp_path / "src").mkdir()
    try:
        with SafeRoot(os.fsencode(tmp_path / "src")) as r:
            yield r
    finally:
        remove_deep(tmp_path / "src")


@pytest.fixture
def few_fds() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (200, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_chain_of_1000_levels_is_walked_whole_with_few_fds(root: SafeRoot, tmp_path: Path, few_fds: None) -> None:
    chain(tmp_path / "src", [b"d"] * 1000)
    (tmp_path / "src" / "d" / "sibling").mkdir()  # the walk comes back up to level 1 for it
    skips = Skips(1)
    entries = list(Scanner(root, on_skip=skips).entries())
    paths = [e.path for e in entries]
    assert skips.total == 0
    assert len(paths) == 1 + 1000 + 1000 + 1  # root, the chain, a file beside each level's child, the sibling
    assert b"/".join([b"d"] * 1000) in paths and b"d/sibling" in paths
    seen: set[bytes] = {b""}
    for p in paths[1:]:  # parents before children
        assert p.rpartition(b"/")[0] in seen, p
        seen.add(p)


def test_a_path_too_long_for_a_manifest_entry_is_skipped_with_the_reason(root: SafeRoot, tmp_path: Path) -> None:
    chain(tmp_path / "src", [b"x" * 255] * 260)  # 66,559 bytes at the bottom: past MAX_PATH (65,535)
    skips = Skips(1)
    entries = list(Scanner(root, on_skip=skips).entries())
    assert max(len(e.path) for e in entries) <= MAX_PATH
    # Level k is 256*k - 1 bytes long: 256 levels fit exactly, the file in the last one and level 257 do not
    # (and nothing below level 257 is walked).
    assert len([e for e in entries if e.kind is Kind.DIR]) == 1 + 256
    assert [len(x.path) for x in skips.listed] == [4096, 4096]
    assert ["cut here at 4096 of its 65537 bytes" in skips.listed[0].reason,
            "cut here at 4096 of its 65791 bytes" in skips.listed[1].reason] == [True, True]
    assert all("a manifest entry carries at most 65535" in x.reason for x in skips.listed)


def test_special_files_are_counted_apart_and_the_list_is_bounded(root: SafeRoot, tmp_path: Path) -> None:
    for i in range(SKIPPED_LISTED + 20):
        os.mkfifo(tmp_path / "src" / f"fifo{i:03d}")
    with socket.socket(socket.AF_UNIX) as sk:
        sk.bind(str(tmp_path / "src" / "zz.sock"))
    skips = Skips(1)
    entries = list(Scanner(root, on_skip=skips).entries())
    assert [e.path for e in entries] == [b""]
    assert (skips.total, skips.special, len(skips.listed)) == (SKIPPED_LISTED + 21, SKIPPED_LISTED + 21,
                                                               SKIPPED_LISTED)
    assert skips.listed[0].path == b"fifo000" and skips.listed[0].reason.startswith("FIFO: only regular files")
    assert skips.last().startswith("fifo099: FIFO")


_SCAN = """
import json, os, sys
from zcrepl.agent.transfer.saferoot import SafeRoot
from zcrepl.agent.transfer.scan import Scanner, Skips
skips = Skips(1)
with SafeRoot(os.fsencode(sys.argv[1])) as root:
    scanner = Scanner(root, on_skip=skips, checksum=True)
    out = [[e.kind, os.fsdecode(e.path), e.flags, e.size] for e in scanner.entries()]
print(json.dumps({"check": scanner.check_access, "entries": out,
                  "skipped": [[os.fsdecode(x.path), x.reason] for x in skips.listed]}))
"""


def _scan_as(prefix: list[str], top: Path) -> dict:  # type: ignore[type-arg]
    p = subprocess.run([*prefix, sys.executable, "-c", _SCAN, str(top)], capture_output=True, text=True,
                       timeout=60, check=True)
    return json.loads(p.stdout)  # type: ignore[no-any-return]


def test_unreadable_entries_are_announced_flagged_and_reported(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "locked" / "inner").mkdir(parents=True)
    (src / "locked" / "inner" / "f").write_bytes(b"x")
    (src / "secret").write_bytes(b"s")
    (src / "open").write_bytes(b"o")
    os.chmod(src / "secret", 0)
    os.chmod(src / "locked", 0)
    got = _scan_as(NO_DAC, src)  # root without the capabilities that bypass permissions
    assert got["check"] is True
    assert got["entries"] == [[Kind.DIR, "", 0, 0], [Kind.DIR, "locked", fr.F_UNREADABLE, 0],
                              [Kind.FILE, "open", 0, 1], [Kind.FILE, "secret", fr.F_UNREADABLE, 0]]
    assert [p for p, _ in got["skipped"]] == ["locked", "secret"]
    assert got["skipped"][0][1].startswith("directory not readable by zc-agent: its contents are not replicated")
    full = _scan_as([], src)  # plain root reads everything and spares the checks
    assert full["check"] is False and full["skipped"] == [] and len(full["entries"]) == 6


def test_the_receiver_keeps_what_an_unreadable_source_entry_names(tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    (dst / "locked").mkdir(parents=True)
    (dst / "locked" / "old").write_bytes(b"keep me")
    (dst / "secret").write_bytes(b"old secret")
    (dst / "extra").write_bytes(b"x")
    with SafeRoot(os.fsencode(dst)) as root:
        w = TreeWriter(root, JobOptions(delete=True), "hostB:/dst", 1)
        assert w.admit(Entry(Kind.DIR, b"", 0o755, 0)) is False
        assert w.admit(Entry(Kind.DIR, b"locked", 0o700, 0, flags=fr.F_UNREADABLE)) is False
        assert w.admit(Entry(Kind.FILE, b"secret", 0o600, 0, flags=fr.F_UNREADABLE)) is False
        with pytest.raises(UnsafePath, match="not a directory announced earlier"):
            w.admit(Entry(Kind.FILE, b"locked/planted", 0o644, 0, 1))  # nothing below an unreadable dir
        w.end_manifest(3)
        w.finish()
    assert (dst / "locked" / "old").read_bytes() == b"keep me"
    assert (dst / "secret").read_bytes() == b"old secret"
    assert not (dst / "extra").exists()


_CHANGES = """
import json, os, sys
from zcrepl.agent.transfer.changes import restricted_manifest
from zcrepl.agent.transfer.saferoot import SafeRoot
from zcrepl.agent.transfer.scan import Scanner, Skips
skips = Skips(1)
with SafeRoot(os.fsencode(sys.argv[1])) as root:
    entries, gone = restricted_manifest(Scanner(root, on_skip=skips, hardlinks=False),
                                        [b"open", b"locked/inner/f", b"locked", b"secret", b"vanished"], {b"locked"})
print(json.dumps({"entries": [[os.fsdecode(e.path), e.flags] for e in entries], "gone": [os.fsdecode(g) for g in gone],
                  "skipped": [os.fsdecode(x.path) for x in skips.listed]}))
"""


def test_a_watch_session_neither_ships_nor_deletes_what_it_cannot_read(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "locked" / "inner").mkdir(parents=True)
    (src / "locked" / "inner" / "f").write_bytes(b"x")
    (src / "secret").write_bytes(b"s")
    (src / "open").write_bytes(b"o")
    os.chmod(src / "secret", 0)
    os.chmod(src / "locked", 0)
    p = subprocess.run([*NO_DAC, sys.executable, "-c", _CHANGES, str(src)], capture_output=True, text=True,
                       timeout=60, check=True)
    got = json.loads(p.stdout)
    assert got["entries"] == [["", 0], ["locked", fr.F_UNREADABLE], ["open", 0], ["secret", fr.F_UNREADABLE]]
    assert got["gone"] == ["vanished"]  # what is really gone still goes; what cannot be read stays
    assert got["skipped"] == ["locked", "locked/inner/f", "secret"]


def test_plain_files_get_the_entries_the_general_path_gives(root: SafeRoot, tmp_path: Path) -> None:
    """A regular file with one name gets its entry in the listing loop itself unless an option asks more of it
    (here, access checks): both paths give the same entries in the same byte order, leave our temp names and
    filtered names out, and keep hard links, sparse files and odd names as they are."""
    d = tmp_path / "src" / "d"
    d.mkdir()
    for name, mode in ((b"plain", 0o4755), (b"\xff\xfe", 0o600), (b".zc", 0o644), (b".zc0", 0o644),
                       (b".zc.tmp", 0o644), (b"x.skip", 0o644), (b"first", 0o644)):
        write_file(Path(os.fsdecode(os.fsencode(d) + b"/" + name)), b"data of " + name, mode)
    os.link(d / "first", d / "second")
    os.symlink("plain", d / "sym")
    with open(d / "sparse", "wb") as f:
        f.truncate(1 << 20)
        f.write(b"head")
    rules = Filter(("- *.skip",))
    fast = list(Scanner(root, filter=rules).entries())
    general = Scanner(root, filter=rules)
    general.check_access = True  # root may read anything: the same entries, through ``entry``
    assert list(general.entries()) == fast
    assert [e.path for e in fast] == [b"", b"d", b"d/.zc", b"d/.zc0", b"d/first", b"d/plain", b"d/second",
                                      b"d/sparse", b"d/sym", b"d/\xff\xfe"]
    by = {e.path: e for e in fast}
    st = os.lstat(d / "plain")
    assert by[b"d/plain"] == Entry(Kind.FILE, b"d/plain", 0o4755, st.st_mtime_ns, 13, uid=st.st_uid, gid=st.st_gid)
    assert by[b"d/sparse"].flags == fr.F_SPARSE and by[b"d/first"].flags == fr.F_LINKED
    assert (by[b"d/second"].kind, by[b"d/second"].target) == (Kind.HARDLINK, b"d/first")
    assert type(by[b"d/\xff\xfe"]) is Entry and by[b"d/\xff\xfe"].mode == 0o600
