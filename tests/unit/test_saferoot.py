"""Tests for zcrepl.agent.transfer.saferoot: validation, confinement, atomic writes (reliability §1-2)."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import resource
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from zcrepl.agent.transfer import saferoot
from zcrepl.agent.transfer.atomic import PREALLOCATE_MIN, AtomicFile, remove_entry, replace_symlink, set_dir_meta
from zcrepl.agent.transfer.saferoot import (
    MAX_DEPTH,
    MAX_NAME,
    TEMP_PREFIX,
    SafeRoot,
    temp_name,
    validate_name,
    validate_relpath,
)
from zcrepl.core.errors import UnsafePath
from zcrepl.core.paths import show

MTIME_NS = 1_600_000_000_123_456_789
ODD_NAMES = [b"new\nline", b"\xff\xfe", b"sp ace\x1b[31m", "café".encode(), b"tab\there\r"]


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def _no_fd_leak() -> Iterator[None]:
    before = _fd_count()
    yield
    assert _fd_count() == before, "file descriptors leaked"


@pytest.fixture(params=[True, False], ids=["openat2", "walk"])
def resolver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Run a test with openat2, then with the per-component walk (openat2 must not even be called); the
    ``root`` fixture passes the choice to its SafeRoot."""
    use = bool(request.param)
    if not use:

        def forbidden(*args: object, **kwargs: object) -> int:
            raise AssertionError("openat2 called by a SafeRoot made with use_openat2=False")

        monkeypatch.setattr(saferoot, "openat2", forbidden)
    return use


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """tmp/root: a/b/, a/f, escape -> ../outside, abs -> /etc, inlink -> a, dang (dangling); tmp/outside."""
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "f").write_bytes(b"data")
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    (root / "escape").symlink_to("../outside")
    (root / "abs").symlink_to("/etc")
    (root / "inlink").symlink_to("a")
    (root / "dang").symlink_to("../outside/newdir")
    return tmp_path


@pytest.fixture
def root(tree: Path, request: pytest.FixtureRequest) -> Iterator[SafeRoot]:
    use_openat2 = request.getfixturevalue("resolver") if "resolver" in request.fixturenames else True
    with SafeRoot(os.fsencode(tree / "root"), use_openat2=use_openat2) as r:
        yield r


def _names(path: Path) -> list[bytes]:
    return sorted(os.listdir(os.fsencode(path)))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# ------------------------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "rel, parts",
    [
        (b"a/b/c", (b"a", b"b", b"c")),
        (b"sp ace/new\nline", (b"sp ace", b"new\nline")),
        (b"\xff\xfe/x", (b"\xff\xfe", b"x")),
        (b"x" * MAX_NAME, (b"x" * MAX_NAME,)),
        (b"...", (b"...",)),
        (b"a/.zc", (b"a", b".zc")),
        (b"", ()),
    ],
)
def test_validate_relpath_accepts(rel: bytes, parts: tuple[bytes, ...]) -> None:
    assert validate_relpath(rel) == parts


@pytest.mark.parametrize(
    "rel",
    [
        b"../x",
        b"/etc/x",
        b"//x",
        b"a/../../x",
        b"a/..",
        b"..",
        b".",
        b"a//b",
        b"a/./b",
        b"a/",
        b"a/\0b",
        b"x" * (MAX_NAME + 1),
        b"a/" + b"x" * (MAX_NAME + 1),
        b".zc.foo",
        b"a/.zc.x.1234abcd.tmp",
        b"/".join([b"d"] * (MAX_DEPTH + 1)),
        b"/".join([b"x" * MAX_NAME] * 257),  # every name legal, 65,792 bytes in total (MAX_PATH is 65,535)
    ],
)
def test_validate_relpath_refuses(rel: bytes) -> None:
    with pytest.raises(UnsafePath):
        validate_relpath(rel)


def test_validate_relpath_depth_limit_is_inclusive() -> None:
    assert len(validate_relpath(b"/".join([b"d"] * MAX_DEPTH))) == MAX_DEPTH


@pytest.mark.parametrize("name", [b"", b".", b"..", b"a/b", b"a\0", b"x" * 256, b".zc.foo"])
def test_validate_name_refuses(name: bytes) -> None:
    with pytest.raises(UnsafePath):
        validate_name(name)


def test_validate_name_rejects_str() -> None:
    with pytest.raises(TypeError):
        validate_name("a")  # type: ignore[arg-type]


def test_refusal_messages_are_escaped() -> None:
    with pytest.raises(UnsafePath) as info:
        validate_relpath(b"evil\n\x1b[2J/../\xff")
    message = str(info.value)
    assert message.isprintable()
    assert "evil\\n\\x1b[2J/../\\xff" in message


@pytest.mark.parametrize(
    "raw, shown",
    [
        (b"plain name.txt", "plain name.txt"),
        ("café/ü".encode(), "café/ü"),
        (b"a\nb", "a\\nb"),
        (b"\x1b[31mred", "\\x1b[31mred"),
        (b"\xff\xfe", "\\xff\\xfe"),
        (b"back\\slash", "back\\\\slash"),
        ("\u202eevil".encode(), "\\u202eevil"),
        ("\u0085".encode(), "\\u0085"),  # a valid C1 control and a raw 0x85 byte must differ
        (b"\x85", "\\x85"),
    ],
)
def test_show(raw: bytes, shown: str) -> None:
    assert show(raw) == shown
    assert show(raw).isprintable()


def test_temp_name_bounded_random_and_reserved() -> None:
    for leaf in (b"f", b"x" * MAX_NAME, "é".encode() * 127):
        tmp = temp_name(leaf)
        assert len(tmp) <= MAX_NAME
        assert tmp.startswith(TEMP_PREFIX) and tmp.endswith(b".tmp")
        with pytest.raises(UnsafePath):  # a peer can never name (or plant) one of our temps
            validate_name(tmp)
    assert temp_name(b"f") != temp_name(b"f")


# ----------------------------------------------------------------------------------------- openat2


def test_openat2_direct(tree: Path) -> None:
    dirfd = os.open(tree / "root", os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fd = saferoot.openat2(dirfd, b"a/b", os.O_RDONLY | os.O_DIRECTORY)
        except OSError as err:
            if err.errno in (errno.ENOSYS, errno.EPERM):
                pytest.skip("openat2 unavailable here")
            raise
        assert stat.S_ISDIR(os.fstat(fd).st_mode)
        assert not os.get_inheritable(fd)  # O_CLOEXEC added
        os.close(fd)
        with pytest.raises(OSError) as info:
            saferoot.openat2(dirfd, b"escape/secret", os.O_RDONLY)
        assert info.value.errno == errno.EXDEV
        with pytest.raises(FileNotFoundError):
            saferoot.openat2(dirfd, b"missing", os.O_RDONLY)
    finally:
        os.close(dirfd)


# ---------------------------------------------------------------------------------------- open_dir


@pytest.mark.parametrize(
    "parts",
    [
        (b"escape",),
        (b"escape", b"x"),
        (b"abs",),
        (b"abs", b"ssl"),
        (b"inlink",),
        (b"inlink", b"b"),
        (b"dang",),
    ],
)
@pytest.mark.parametrize("create", [False, True])
def test_open_dir_refuses_symlinks(
    root: SafeRoot, tree: Path, resolver: bool, parts: tuple[bytes, ...], create: bool
) -> None:
    with pytest.raises(UnsafePath):
        fd = root.open_dir(parts, create=create)
        os.close(fd)
    assert _names(tree / "outside") == [b"secret"]


@pytest.mark.parametrize("parts", [(b"..",), (b"a", b".."), (b"/etc",), (b"",), (b".zc.x",)])
def test_open_dir_validates_parts(root: SafeRoot, resolver: bool, parts: tuple[bytes, ...]) -> None:
    with pytest.raises(UnsafePath):
        os.close(root.open_dir(parts))


def test_open_dir_ok_missing_and_not_a_dir(root: SafeRoot, tree: Path, resolver: bool) -> None:
    fd = root.open_dir((b"a", b"b"))
    try:
        assert os.fstat(fd).st_ino == (tree / "root" / "a" / "b").stat().st_ino
    finally:
        os.close(fd)
    fd = root.open_dir(())
    try:
        assert fd != root.fd and os.fstat(fd).st_ino == os.fstat(root.fd).st_ino
    finally:
        os.close(fd)
    with pytest.raises(FileNotFoundError):
        root.open_dir((b"a", b"missing"))
    with pytest.raises(NotADirectoryError):
        root.open_dir((b"a", b"f"))
    with pytest.raises(NotADirectoryError):
        root.open_dir((b"a", b"f", b"x"))


@pytest.mark.parametrize("err", [errno.ENOSYS, errno.EPERM])
def test_open_dir_falls_back_when_openat2_is_refused(
    root: SafeRoot, monkeypatch: pytest.MonkeyPatch, err: int
) -> None:
    calls: list[bytes] = []

    def refused(dirfd: int, path: bytes, *args: object, **kwargs: object) -> int:
        calls.append(path)
        raise OSError(err, os.strerror(err), path)

    assert root.use_openat2
    monkeypatch.setattr(saferoot, "openat2", refused)
    os.close(root.open_dir((b"a", b"b")))
    with pytest.raises(UnsafePath):
        root.open_dir((b"escape", b"x"))
    assert calls == [b"a/b", b"escape/x"]


def test_create_makes_one_component_at_a_time(
    root: SafeRoot, tree: Path, resolver: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[tuple[bytes, int | None]] = []
    real_mkdir = os.mkdir

    def spy(path: bytes, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        made.append((path, dir_fd))
        real_mkdir(path, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "mkdir", spy)
    umask = os.umask(0)
    os.umask(umask)
    fd = root.open_dir((b"a", b"x", b"y\n", b"\xff"), create=True, mode=0o750)
    os.close(fd)
    assert [name for name, _ in made] == [b"x", b"y\n", b"\xff"]
    assert all(dir_fd is not None for _, dir_fd in made)
    leaf = tree / "root" / "a" / "x" / "y\n" / os.fsdecode(b"\xff")
    assert leaf.is_dir() and not leaf.is_symlink()
    assert stat.S_IMODE(leaf.stat().st_mode) == 0o750 & ~umask
    made.clear()
    os.close(root.open_dir((b"a", b"x", b"y\n", b"\xff"), create=True))  # all there: nothing to make
    assert made == []


def test_create_never_follows_a_planted_symlink(root: SafeRoot, tree: Path, resolver: bool) -> None:
    # dang -> ../outside/newdir is dangling: a following mkdir would create outside/newdir.
    for parts in [(b"dang", b"x"), (b"escape", b"new"), (b"a", b"b", b"c")]:
        if parts[0] == b"a":
            (tree / "root" / "a" / "b" / "c").symlink_to("../../../outside")
        with pytest.raises(UnsafePath):
            os.close(root.open_dir(parts, create=True))
    assert _names(tree / "outside") == [b"secret"]


# -------------------------------------------------------------------------------- open_read, lstat


def test_open_read_regular_file(root: SafeRoot) -> None:
    fd = root.open_read((b"a", b"f"))
    try:
        assert os.read(fd, 100) == b"data"
    finally:
        os.close(fd)


def test_open_read_refuses_symlink_leaf_and_parent(root: SafeRoot, tree: Path, resolver: bool) -> None:
    (tree / "root" / "link").symlink_to("a/f")
    (tree / "root" / "out").symlink_to("../outside/secret")
    for parts in [(b"link",), (b"out",), (b"escape", b"secret"), (b"inlink", b"f")]:
        with pytest.raises(UnsafePath):
            os.close(root.open_read(parts))


def test_open_read_refuses_fifo_without_blocking(root: SafeRoot, tree: Path) -> None:
    fifo = tree / "root" / "fifo"
    os.mkfifo(fifo)
    outcome: list[BaseException | int] = []

    def attempt() -> None:
        try:
            outcome.append(root.open_read((b"fifo",)))
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(2.0)
    if worker.is_alive():  # unblock the stuck open so the test can report instead of hanging
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(2.0)
        pytest.fail("open_read blocked on a FIFO")
    assert len(outcome) == 1 and isinstance(outcome[0], UnsafePath), outcome


def test_open_read_refuses_directory(root: SafeRoot) -> None:
    with pytest.raises(UnsafePath):
        os.close(root.open_read((b"a", b"b")))


def test_lstat(root: SafeRoot, tree: Path, resolver: bool) -> None:
    st = root.lstat((b"a", b"f"))
    assert st is not None and st.st_size == 4
    st = root.lstat((b"escape",))
    assert st is not None and stat.S_ISLNK(st.st_mode)
    assert root.lstat((b"a", b"missing")) is None
    assert root.lstat((b"missing", b"x")) is None
    assert root.lstat((b"a", b"f", b"x")) is None
    root_st = root.lstat(())
    assert root_st is not None and root_st.st_ino == (tree / "root").stat().st_ino
    with pytest.raises(UnsafePath):
        root.lstat((b"escape", b"secret"))


def test_open_parent(root: SafeRoot, resolver: bool) -> None:
    pfd, leaf = root.open_parent((b"a", b"new"))
    os.close(pfd)
    assert leaf == b"new"
    with pytest.raises(UnsafePath):
        root.open_parent(())
    with pytest.raises(UnsafePath):
        root.open_parent((b"a", b".."))


def test_saferoot_close_is_idempotent(tree: Path) -> None:
    r = SafeRoot(os.fsencode(tree / "root"))
    r.close()
    r.close()
    assert r.fd == -1


# -------------------------------------------------------------------------------------- AtomicFile


def test_atomic_file_invisible_until_commit(root: SafeRoot, tree: Path) -> None:
    pfd, leaf = root.open_parent((b"a", b"new"))
    try:
        with AtomicFile(pfd, leaf, size=5) as af:
            _write_all(af.fd, b"hello")
            assert not (tree / "root" / "a" / "new").exists()
            tmp_names = [n for n in _names(tree / "root" / "a") if n.startswith(TEMP_PREFIX)]
            assert tmp_names == [af.tmp]
            af.commit(0o755, MTIME_NS)
    finally:
        os.close(pfd)
    final = tree / "root" / "a" / "new"
    assert final.read_bytes() == b"hello"
    st = final.stat()
    assert stat.S_IMODE(st.st_mode) == 0o755
    assert st.st_mtime_ns == MTIME_NS
    assert _names(tree / "root" / "a") == [b"b", b"f", b"new"]


def test_atomic_file_masks_special_mode_bits(root: SafeRoot, tree: Path) -> None:
    with AtomicFile(root.fd, b"suid") as af:
        af.commit(0o4755 | 0o2000 | 0o1000, MTIME_NS, fsync=True)
    assert stat.S_IMODE((tree / "root" / "suid").stat().st_mode) == 0o755


def test_atomic_file_replaces_existing_file(root: SafeRoot, tree: Path) -> None:
    target = tree / "root" / "a" / "f"
    old_ino = target.stat().st_ino
    pfd, leaf = root.open_parent((b"a", b"f"))
    try:
        with AtomicFile(pfd, leaf) as af:
            _write_all(af.fd, b"new content")
            assert target.read_bytes() == b"data"
            af.commit(0o600, MTIME_NS)
    finally:
        os.close(pfd)
    assert target.read_bytes() == b"new content"
    assert target.stat().st_ino != old_ino


def test_atomic_file_replaces_symlink_never_writes_through(root: SafeRoot, tree: Path) -> None:
    link = tree / "root" / "leaf"
    link.symlink_to("../outside/secret")
    with AtomicFile(root.fd, b"leaf") as af:
        _write_all(af.fd, b"mine")
        af.commit(0o644, MTIME_NS)
    assert not link.is_symlink() and link.read_bytes() == b"mine"
    assert (tree / "outside" / "secret").read_bytes() == b"secret"


def test_atomic_file_discard_leaves_nothing(root: SafeRoot, tree: Path) -> None:
    before = _names(tree / "root")
    af = AtomicFile(root.fd, b"gone", size=4096)
    _write_all(af.fd, b"partial")
    af.discard()
    af.discard()
    assert af.fd == -1
    assert _names(tree / "root") == before
    with pytest.raises(ValueError):
        af.commit(0o644, MTIME_NS)
    with pytest.raises(RuntimeError), AtomicFile(root.fd, b"gone") as af2:
        _write_all(af2.fd, b"partial")
        raise RuntimeError("stream broke")
    assert _names(tree / "root") == before


def test_atomic_file_over_directory_raises_and_cleans_up(root: SafeRoot, tree: Path) -> None:
    pfd, leaf = root.open_parent((b"a", b"b"))
    try:
        af = AtomicFile(pfd, leaf)
        with pytest.raises(IsADirectoryError):
            af.commit(0o644, MTIME_NS)
        af.discard()
    finally:
        os.close(pfd)
    assert (tree / "root" / "a" / "b").is_dir()
    assert _names(tree / "root" / "a") == [b"b", b"f"]


def test_atomic_file_commits_again_once_the_directory_in_the_way_is_gone(root: SafeRoot, tree: Path) -> None:
    (tree / "root" / "a" / "empty").mkdir()
    pfd, leaf = root.open_parent((b"a", b"empty"))
    try:
        af = AtomicFile(pfd, leaf)
        os.write(af.fd, b"data")
        with pytest.raises(IsADirectoryError):
            af.commit(0o640, MTIME_NS)
        os.rmdir(leaf, dir_fd=pfd)
        af.commit(0o640, MTIME_NS)
    finally:
        os.close(pfd)
    assert (tree / "root" / "a" / "empty").read_bytes() == b"data"
    assert (tree / "root" / "a" / "empty").stat().st_mtime_ns == MTIME_NS


def test_atomic_file_refuses_bad_leaf(root: SafeRoot) -> None:
    for leaf in (b"..", b"a/b", b".zc.x"):
        with pytest.raises(UnsafePath):
            AtomicFile(root.fd, leaf)


@pytest.mark.parametrize("code", [errno.EOPNOTSUPP, errno.EINVAL])
def test_fallocate_unsupported_is_ignored(
    root: SafeRoot, tree: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    def unsupported(fd: int, offset: int, length: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "posix_fallocate", unsupported)
    data = b"0123456789" * (PREALLOCATE_MIN // 10 + 1)
    with AtomicFile(root.fd, b"nofalloc", size=len(data)) as af:
        _write_all(af.fd, data)
        af.commit(0o644, MTIME_NS)
    assert (tree / "root" / "nofalloc").read_bytes() == data


def test_fallocate_failure_removes_temp(root: SafeRoot, tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "posix_fallocate", broken)
    before = _names(tree / "root")
    with pytest.raises(OSError) as info:
        AtomicFile(root.fd, b"big", size=PREALLOCATE_MIN)
    assert info.value.errno == errno.EIO
    assert _names(tree / "root") == before


@contextlib.contextmanager
def _small_tmpfs(where: Path) -> Iterator[Path]:
    where.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount tmpfs: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True, timeout=10)


def test_fallocate_enospc_fails_fast_and_leaves_no_temp(tmp_path: Path) -> None:
    with _small_tmpfs(tmp_path / "small") as small, SafeRoot(os.fsencode(small)) as r:
        (small / "keep").write_bytes(b"old")
        with pytest.raises(OSError) as info:
            AtomicFile(r.fd, b"keep", size=10 * 1024 * 1024)
        assert info.value.errno == errno.ENOSPC
        assert _names(small) == [b"keep"]
        assert (small / "keep").read_bytes() == b"old"


# ---------------------------------------------------------------------------------- symlinks, meta


def test_replace_symlink_dangling_verbatim_with_mtime(root: SafeRoot, tree: Path) -> None:
    target = b"../../nowhere/\xff\nx"
    replace_symlink(root.fd, b"lnk", target, MTIME_NS)
    assert os.readlink(os.fsencode(tree / "root" / "lnk")) == target
    st = os.lstat(tree / "root" / "lnk")
    assert stat.S_ISLNK(st.st_mode) and st.st_mtime_ns == MTIME_NS
    assert not any(n.startswith(TEMP_PREFIX) for n in _names(tree / "root"))


def test_replace_symlink_replaces_file_and_link(root: SafeRoot, tree: Path) -> None:
    pfd, leaf = root.open_parent((b"a", b"f"))
    try:
        replace_symlink(pfd, leaf, b"b", MTIME_NS)
        replace_symlink(pfd, leaf, b"/etc/passwd", MTIME_NS + 1)
    finally:
        os.close(pfd)
    f = tree / "root" / "a" / "f"
    assert f.is_symlink() and os.readlink(f) == "/etc/passwd"
    assert os.lstat(f).st_mtime_ns == MTIME_NS + 1
    assert _names(tree / "root" / "a") == [b"b", b"f"]


def test_replace_symlink_refuses_bad_input_and_cleans_up(root: SafeRoot, tree: Path) -> None:
    before = _names(tree / "root")
    for leaf, target in [(b"..", b"x"), (b".zc.a", b"x"), (b"ok", b""), (b"ok", b"a\0b")]:
        with pytest.raises(UnsafePath):
            replace_symlink(root.fd, leaf, target, MTIME_NS)
    with pytest.raises(IsADirectoryError):  # a directory is in the way: temp link must not linger
        replace_symlink(root.fd, b"a", b"x", MTIME_NS)
    assert _names(tree / "root") == before


@pytest.mark.parametrize("name", ODD_NAMES)
def test_odd_names_round_trip(root: SafeRoot, tree: Path, resolver: bool, name: bytes) -> None:
    pfd, leaf = root.open_parent((name, name), create=True)
    try:
        with AtomicFile(pfd, leaf) as af:
            _write_all(af.fd, name)
            af.commit(0o640, MTIME_NS)
        replace_symlink(pfd, name + b".lnk", name, MTIME_NS)
    finally:
        os.close(pfd)
    d = os.fsencode(tree / "root") + b"/" + name
    assert sorted(os.listdir(d)) == sorted([name, name + b".lnk"])
    with open(d + b"/" + name, "rb") as fh:
        assert fh.read() == name
    assert os.readlink(d + b"/" + name + b".lnk") == name
    fd = root.open_read((name, name))
    try:
        assert os.read(fd, 100) == name
    finally:
        os.close(fd)


def test_set_dir_meta(root: SafeRoot, tree: Path) -> None:
    fd = root.open_dir((b"a", b"b"))
    try:
        set_dir_meta(fd, 0o40751 | 0o1000, MTIME_NS)
    finally:
        os.close(fd)
    st = (tree / "root" / "a" / "b").stat()
    assert stat.S_IMODE(st.st_mode) == 0o751 and st.st_mtime_ns == MTIME_NS


# ------------------------------------------------------------------------------------ remove_entry


def test_remove_file_link_and_absent(root: SafeRoot, tree: Path) -> None:
    (tree / "outside" / "d").mkdir()
    (tree / "outside" / "d" / "x").write_bytes(b"x")
    (tree / "root" / "todir").symlink_to("../outside/d")
    assert remove_entry(root.fd, b"todir") == 1
    assert (tree / "outside" / "d" / "x").read_bytes() == b"x"
    assert remove_entry(root.fd, b"escape") == 1
    assert _names(tree / "outside") == [b"d", b"secret"]
    pfd, leaf = root.open_parent((b"a", b"f"))
    try:
        assert remove_entry(pfd, leaf) == 1
        assert remove_entry(pfd, leaf) == 0
    finally:
        os.close(pfd)
    assert remove_entry(root.fd, b"absent") == 0
    with pytest.raises(UnsafePath):
        remove_entry(root.fd, b"..")


def test_remove_tree_counts_and_stays_inside(root: SafeRoot, tree: Path) -> None:
    top = tree / "root" / "t"
    (top / "b" / "c").mkdir(parents=True)
    (top / "f1").write_bytes(b"1")
    (top / "b" / "f2").write_bytes(b"2")
    (top / "b" / "c" / os.fsdecode(b"\xff\n")).write_bytes(b"3")  # a non-UTF-8 name
    (top / "b" / "out").symlink_to("../../../outside")
    (top / "e").mkdir()
    # t, f1, b, f2, c, c/<odd>, out, e
    assert remove_entry(root.fd, b"t") == 8
    assert not top.exists()
    assert _names(tree / "outside") == [b"secret"]


def _chain(dir_fd: int, depth: int, name: bytes = b"d", files: int = 0) -> None:
    """``depth`` nested directories ``name`` below ``dir_fd``, each holding ``files`` files too."""
    fd = os.dup(dir_fd)
    try:
        for _ in range(depth):
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
            for i in range(files):
                os.close(os.open(b"f%d" % i, os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
    finally:
        os.close(fd)


@pytest.fixture
def few_fds() -> Iterator[int]:
    """RLIMIT_NOFILE lowered to 200 for the test: a removal that holds an fd per level runs out at once."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (200, hard))
    try:
        yield 200
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_remove_tree_at_any_depth_with_few_fds(root: SafeRoot, tree: Path, few_fds: int) -> None:
    depth = 5 * few_fds
    names = _names(tree / "root")
    _chain(root.fd, depth, files=2)
    before = len(os.listdir("/proc/self/fd"))
    assert remove_entry(root.fd, b"d") == 3 * depth  # every directory and the two files in each
    assert _names(tree / "root") == names
    assert len(os.listdir("/proc/self/fd")) == before
    assert _names(tree / "outside") == [b"secret"]


def test_remove_tree_deeper_than_path_max(root: SafeRoot, tree: Path) -> None:
    names = _names(tree / "root")
    _chain(root.fd, 40, name=b"n" * 200)  # 8,040 bytes of path: no single syscall could name the bottom
    assert remove_entry(root.fd, b"n" * 200) == 40
    assert _names(tree / "root") == names


# -------------------------------------------------------------------------------------------- race


def _exchanger() -> Callable[..., int] | None:
    """glibc's renameat2, for an atomic RENAME_EXCHANGE swap (the strongest attacker), if present."""
    return getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)


def test_symlink_swap_race_never_writes_outside(root: SafeRoot, tree: Path, resolver: bool) -> None:
    base = tree / "root"
    (base / "x").mkdir()
    (base / "y").symlink_to("../outside")
    renameat2 = _exchanger()
    a, x, y = (os.fsencode(base / n) for n in ("a", "x", "y"))
    os.rmdir(base / "a" / "b")
    os.unlink(base / "a" / "f")
    os.rmdir(base / "a")
    os.rename(x, a)  # a: real dir, y: symlink to ../outside
    if renameat2 is not None and renameat2(-100, a, -100, y, 2) != 0:  # RENAME_EXCHANGE
        renameat2 = None
    stop = threading.Event()
    flips = 0

    def flipper() -> None:
        nonlocal flips
        while not stop.is_set():
            if renameat2 is not None:
                renameat2(-100, a, -100, y, 2)
            else:  # no atomic exchange: a moment with no "a" at all, which create=True may fill
                with contextlib.suppress(OSError):
                    os.rename(a, x)
                    os.rename(y, a)
                    os.rename(a, y)
                    os.rename(x, a)
            flips += 1

    written = refused = 0
    worker = threading.Thread(target=flipper)
    worker.start()
    try:
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            try:
                pfd, leaf = root.open_parent((b"a", b"f"), create=True)
                try:
                    with AtomicFile(pfd, leaf) as af:
                        _write_all(af.fd, b"payload")
                        af.commit(0o644, MTIME_NS)
                finally:
                    os.close(pfd)
                written += 1
            except (UnsafePath, OSError):
                refused += 1
    finally:
        stop.set()
        worker.join()
    assert _names(tree / "outside") == [b"secret"]
    assert (tree / "outside" / "secret").read_bytes() == b"secret"
    assert flips > 10 and written > 0 and refused > 0, (flips, written, refused)


# ------------------------------------------------------------------------------------- past PATH_MAX


def _walk_fd(dir_fd: int, parts: tuple[bytes, ...]) -> int:
    fd = os.dup(dir_fd)
    for name in parts:
        child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        os.close(fd)
        fd = child
    return fd


def test_open_dir_deeper_than_path_max(root: SafeRoot, resolver: bool) -> None:
    parts = (b"n" * 200,) * 40  # 8,039 bytes: more than one syscall may resolve
    _chain(root.fd, len(parts), name=parts[0])
    fd = root.open_dir(parts)
    ref = _walk_fd(root.fd, parts)
    try:
        assert os.fstat(fd).st_ino == os.fstat(ref).st_ino
    finally:
        os.close(fd)
        os.close(ref)
    made = root.open_dir((*parts, b"new", b"deeper"), create=True)
    os.close(made)
    assert root.lstat((*parts, b"new", b"deeper")) is not None
    with pytest.raises(FileNotFoundError):
        root.open_dir((*parts, b"missing"))


def test_a_symlink_deep_below_path_max_is_refused(root: SafeRoot, tree: Path, resolver: bool) -> None:
    parts = (b"n" * 200,) * 40
    _chain(root.fd, len(parts), name=parts[0])
    pfd = _walk_fd(root.fd, parts[:30])
    try:
        os.rename(parts[30], b"moved", src_dir_fd=pfd, dst_dir_fd=pfd)
        os.symlink(os.fsencode(tree / "outside"), parts[30], dir_fd=pfd)
    finally:
        os.close(pfd)
    with pytest.raises(UnsafePath, match="a symlink is in the way"):
        root.open_dir(parts)
    with pytest.raises(UnsafePath):
        root.open_dir((*parts[:31], b"x"), create=True)
    assert _names(tree / "outside") == [b"secret"]


def test_open_below_and_open_child_start_from_a_held_directory(root: SafeRoot, tree: Path) -> None:
    parts = (b"n" * 200,) * 40
    _chain(root.fd, len(parts), name=parts[0])
    mid = root.open_dir(parts[:20])
    try:
        fd = root.open_below(mid, parts[:20], parts[20:])
        os.close(fd)
        fd = root.open_child(mid, parts[20], b"/".join(parts[:21]))
        os.close(fd)
        with pytest.raises(UnsafePath, match="a symlink is in the way"):
            root.open_child(root.fd, b"escape", b"escape")
        with pytest.raises(UnsafePath):
            root.open_child(mid, b"..", b"..")
    finally:
        os.close(mid)


def test_paths_longer_than_path_max_are_valid_up_to_the_wire_limit() -> None:
    deep = b"/".join([b"d"] * 300)  # deeper than the old 256-level limit
    assert len(validate_relpath(deep)) == 300
    assert len(validate_relpath(b"/".join([b"x" * 255] * 256))) == 256  # 65,535 bytes: MAX_PATH exactly
