"""--backup-dir and --link-dest in the receiver (TreeWriter behind LocalCopy, the path a network receiver takes
too): what a run overwrites or deletes lands in the backup directory with its path kept, and an unchanged file
is hard-linked from an earlier copy instead of copied. test_rsyncopts_cluster.py runs both through zc-ctl."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from zcrepl.agent.transfer.backup import Backup, DirRefused
from zcrepl.agent.transfer.jobdirs import ExtraDirs
from zcrepl.agent.transfer.local import LocalCopy
from zcrepl.agent.transfer.saferoot import SafeRoot
from zcrepl.core.types import Durability, JobOptions, TransferStats

T = 1_600_000_000


def _tree(root: Path, files: dict[str, bytes], t: int = T) -> None:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        os.utime(p, (t, t))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink()}


def _run(base: Path, src: str, dst: str, options: JobOptions, backup: str = "",
         link_dest: tuple[str, ...] = ()) -> TransferStats:
    with SafeRoot(os.fsencode(base / src)) as s, SafeRoot(os.fsencode(base)) as export:
        dirs = ExtraDirs((export, (os.fsencode(backup),)) if backup else None,
                         tuple((export, (os.fsencode(d),)) for d in link_dest))
        return LocalCopy(1, s, export, (os.fsencode(dst),), options, "hostB:/dst", threading.Event(),
                         lambda _s: None, dirs=dirs).run()


def test_backup_keeps_what_a_run_overwrites_and_deletes(tmp_path: Path) -> None:
    _tree(tmp_path / "src", {"top.txt": b"new top", "a/b/deep.txt": b"new deep", "same.txt": b"same"})
    _tree(tmp_path / "dst", {"top.txt": b"old top", "a/b/deep.txt": b"old deep", "same.txt": b"same",
                             "gone.txt": b"deleted", "old/x/y.txt": b"deleted deep", "a/extra": b"extra"}, T - 50)
    os.utime(tmp_path / "dst" / "same.txt", (T, T))
    os.symlink("top.txt", tmp_path / "src" / "link")
    os.symlink("same.txt", tmp_path / "dst" / "link")
    old_inode = (tmp_path / "dst" / "top.txt").stat().st_ino
    stats = _run(tmp_path, "src", "dst", JobOptions(delete=True), backup="bak")
    assert _files(tmp_path / "dst") == {"top.txt": b"new top", "a/b/deep.txt": b"new deep", "same.txt": b"same"}
    assert _files(tmp_path / "bak") == {"top.txt": b"old top", "a/b/deep.txt": b"old deep", "gone.txt": b"deleted",
                                        "old/x/y.txt": b"deleted deep", "a/extra": b"extra"}
    assert os.readlink(tmp_path / "bak" / "link") == "same.txt"  # a replaced symlink is kept as a link
    assert (tmp_path / "bak" / "top.txt").stat().st_ino == old_inode  # the old file itself, not a copy
    assert stats.backed_up == 6 and stats.deleted == 5  # gone.txt, old, old/x, old/x/y.txt, a/extra

    # The next run's previous versions replace the older backups of the same paths.
    _tree(tmp_path / "src", {"top.txt": b"newer top"}, T + 10)
    _run(tmp_path, "src", "dst", JobOptions(delete=True), backup="bak")
    assert (tmp_path / "bak" / "top.txt").read_bytes() == b"new top"
    assert not [p for p in (tmp_path / "bak").rglob(".zc*")] and not [p for p in (tmp_path / "dst").rglob(".zc*")]


def test_without_delete_nothing_is_deleted_or_backed_up_but_overwrites(tmp_path: Path) -> None:
    _tree(tmp_path / "src", {"f": b"new"})
    _tree(tmp_path / "dst", {"f": b"old", "extra": b"stays"}, T - 5)
    stats = _run(tmp_path, "src", "dst", JobOptions(durability=Durability.FILE), backup="bak")  # fsyncs each backup
    assert _files(tmp_path / "bak") == {"f": b"old"} and stats.backed_up == 1
    assert _files(tmp_path / "dst") == {"f": b"new", "extra": b"stays"}


def test_keep_links_before_the_new_version_replaces_it(tmp_path: Path) -> None:
    """The old version gets its backup name while it still has its own: at no moment is the path missing."""
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "f").write_bytes(b"old")
    (tmp_path / "bak").mkdir()
    with SafeRoot(os.fsencode(tmp_path / "bak")) as broot, SafeRoot(os.fsencode(tmp_path / "dst")) as droot:
        b = Backup(SafeRoot.from_fd(os.dup(broot.fd), broot.path))
        try:
            b.keep(droot.fd, b"f", b"sub/f")
        finally:
            b.close()
    assert (tmp_path / "dst" / "f").read_bytes() == b"old"
    assert os.path.samefile(tmp_path / "dst" / "f", tmp_path / "bak" / "sub" / "f")


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no tmpfs at /dev/shm")
def test_backup_dir_on_another_filesystem_is_refused(tmp_path: Path) -> None:
    other = Path("/dev/shm") / f"zc-bak-{os.getpid()}"
    if os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("/dev/shm and the test directory share a filesystem")
    _tree(tmp_path / "src", {"f": b"new"})
    _tree(tmp_path / "dst", {"f": b"old"}, T - 5)
    try:
        with SafeRoot(os.fsencode(tmp_path / "src")) as s, SafeRoot(os.fsencode(tmp_path)) as export, \
                SafeRoot(b"/dev/shm") as shm:
            copier = LocalCopy(1, s, export, (b"dst",), JobOptions(), "hostB:/dst", threading.Event(),
                               lambda _s: None, dirs=ExtraDirs((shm, (os.fsencode(other.name),))))
            with pytest.raises(DirRefused, match="on another filesystem than hostB:/dst"):
                copier.run()
        assert (tmp_path / "dst" / "f").read_bytes() == b"old"
    finally:
        if other.exists():
            other.rmdir()


def test_link_dest_links_unchanged_files_and_copies_changed_ones(tmp_path: Path) -> None:
    files = {"same.txt": b"same", "a/deep.txt": b"deep", "changed.txt": b"v1", "mode.txt": b"m"}
    _tree(tmp_path / "src", files)
    _run(tmp_path, "src", "snap1", JobOptions())
    _tree(tmp_path / "src", {"changed.txt": b"v2", "new.txt": b"new"}, T + 60)
    os.chmod(tmp_path / "src" / "mode.txt", 0o600)
    stats = _run(tmp_path, "src", "snap2", JobOptions(), link_dest=("missing", "snap1"))
    s1, s2 = tmp_path / "snap1", tmp_path / "snap2"
    assert _files(s2) == {**files, "changed.txt": b"v2", "new.txt": b"new"}
    assert os.path.samefile(s1 / "same.txt", s2 / "same.txt") and os.path.samefile(s1 / "a/deep.txt", s2 / "a/deep.txt")
    for name in ("changed.txt", "mode.txt", "new.txt"):
        assert not (s1 / name).exists() or not os.path.samefile(s1 / name, s2 / name), name
    assert stats.linked == 2 and stats.files_done == 3
    assert (s1 / "changed.txt").read_bytes() == b"v1" and (s1 / "mode.txt").stat().st_mode & 0o777 != 0o600

    # With --checksum the content decides too: same size and mtime, other bytes, not linked.
    (tmp_path / "snap1" / "same.txt").unlink()
    _tree(tmp_path / "snap1", {"same.txt": b"SAME"})
    stats = _run(tmp_path, "src", "snap3", JobOptions(checksum=True), link_dest=("snap1",))
    assert (tmp_path / "snap3" / "same.txt").read_bytes() == b"same"
    assert not os.path.samefile(s1 / "same.txt", tmp_path / "snap3" / "same.txt") and stats.linked == 1
