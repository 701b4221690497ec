"""A resume never writes into a partial file that has another name (issue 9, finding 9's sibling): the
partial area is ours, but a local user who planted a hard link there would otherwise have us write through it."""

from __future__ import annotations

import os
from pathlib import Path

from zcrepl.agent.transfer.atomic import AtomicFile
from zcrepl.agent.transfer.partial import AREA, PartialArea
from zcrepl.agent.transfer.saferoot import SafeRoot

SIZE = 9 << 20


def _saved(root: SafeRoot, rel: bytes) -> PartialArea:
    area = PartialArea(root)
    tmp = AtomicFile(root.fd, rel, SIZE)
    os.pwrite(tmp.fd, b"a" * 4096, 0)
    assert area.save(rel, tmp, SIZE, 7, [(0, 4096)])
    return area


def test_a_partial_with_other_links_is_not_resumed(tmp_path: Path) -> None:
    (tmp_path / "dst").mkdir()
    outside = tmp_path / "outside-file"
    with SafeRoot(os.fsencode(tmp_path / "dst")) as root:
        area = _saved(root, b"big")
        p = area.find(b"big", SIZE, 7)
        assert p is not None
        part = tmp_path / "dst" / os.fsdecode(AREA) / os.fsdecode(p.key + b".part")
        os.link(part, outside)
        before = outside.read_bytes()
        pfd = os.open(tmp_path / "dst", os.O_RDONLY | os.O_DIRECTORY)
        try:
            assert area.take(p, pfd, b"big") is None
        finally:
            os.close(pfd)
    assert outside.read_bytes() == before and os.stat(outside).st_nlink == 1
    assert not [n for n in os.listdir(tmp_path / "dst") if n.startswith(".zc.") and n.endswith(".tmp")]


def test_an_ordinary_partial_is_resumed(tmp_path: Path) -> None:
    (tmp_path / "dst").mkdir()
    with SafeRoot(os.fsencode(tmp_path / "dst")) as root:
        area = _saved(root, b"big")
        p = area.find(b"big", SIZE, 7)
        assert p is not None
        pfd = os.open(tmp_path / "dst", os.O_RDONLY | os.O_DIRECTORY)
        try:
            tmp = area.take(p, pfd, b"big")
            assert tmp is not None and os.pread(tmp.fd, 4, 0) == b"aaaa"
            tmp.discard()
        finally:
            os.close(pfd)
