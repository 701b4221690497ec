"""The data plane in one process, over real loopback sockets and real files: parallel streams, large
files split into ranges, and every fast path forced onto its fallback still give identical trees."""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from zchelpers import diff_trees, make_tree, rewrite, set_default_acl, snapshot

from zcrepl.agent.transfer import receive, send_worker, sendio
from zcrepl.agent.transfer.cancel import Cancel
from zcrepl.agent.transfer.channel import ZERO_COPY, Channel, ZeroCopy
from zcrepl.agent.transfer.frame import Hello
from zcrepl.agent.transfer.receive import ReceiveSession, ReceiveSpec
from zcrepl.agent.transfer.saferoot import SafeRoot
from zcrepl.agent.transfer.send import Sender, SendSpec
from zcrepl.agent.transfer.server import DataServer, Grant, TicketBook
from zcrepl.core.config import AgentConfig
from zcrepl.core.errors import TransferError
from zcrepl.core.exportpolicy import ExportPolicy
from zcrepl.core.types import JobOptions, TransferStats


class Plane:
    """A receiving data server and a way to run one sender against it."""

    def __init__(self, dst_export: Path) -> None:
        self.tickets = TicketBook()
        self.server = DataServer("127.0.0.1", 0, self.tickets, AgentConfig())
        self.server.start()
        self.export = SafeRoot(os.fsencode(dst_export))
        self.results: list[Any] = []
        self.jobs = 0
        self.policy = ExportPolicy()  # the destination export's

    def run(self, src: Path, rel: bytes, zero_copy: ZeroCopy = ZERO_COPY, **options: Any) -> tuple[TransferStats, Any]:
        self.jobs += 1
        job = self.jobs
        ticket = os.urandom(32)
        opts = JobOptions(**options)
        done = threading.Event()

        def serve(ch: Channel, hello: Hello) -> None:
            session = ReceiveSession(ReceiveSpec(job, 1, self.export, tuple(rel.split(b"/")), opts, "dst",
                                                 policy=self.policy, zero_copy=zero_copy), self.tickets)
            try:
                self.results.append(session.serve_control(ch, hello))
            except Exception as err:
                self.results.append(err)
            finally:
                done.set()

        self.tickets.register(ticket, Grant(job, 1, time.monotonic() + 30, serve))
        spec = SendSpec(job, 1, ticket, self.server.address, opts, Cancel(), lambda _s: None,
                        zero_copy=zero_copy)
        root = SafeRoot(os.fsencode(src))
        try:
            stats = Sender(spec, root).run()
        finally:
            root.close()
            done.wait(10)
        return stats, self.results[-1]

    def close(self) -> None:
        self.server.stop()
        self.export.close()


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[Plane]:
    (tmp_path / "dst").mkdir()
    p = Plane(tmp_path / "dst")
    yield p
    p.close()


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src") / "tree"
    make_tree(src, files=300, big=40 << 20)
    return src


@pytest.mark.parametrize("streams", [1, 3])
@pytest.mark.parametrize("splice", [True, False], ids=["splice", "recv_into"])
@pytest.mark.parametrize("sendfile", [True, False], ids=["sendfile", "read+send"])
def test_identical_trees_on_every_path(plane: Plane, tree: Path, tmp_path: Path, streams: int, splice: bool,
                                       sendfile: bool) -> None:
    paths = ZeroCopy(sendfile=sendfile, splice=splice)
    stats, result = plane.run(tree, b"copy", paths, streams=streams)
    assert isinstance(result, TransferStats), result
    assert not diff_trees(snapshot(tree), snapshot(tmp_path / "dst" / "copy"))
    assert stats.bytes_done >= 40 << 20 and stats.errors == 0
    again, _ = plane.run(tree, b"copy", paths, streams=streams)
    assert (again.files_done, again.bytes_done) == (0, 0)


def test_sendfile_refused_at_first_byte_falls_back(plane: Plane, tree: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}

    def refuse(*_a: Any) -> int:
        calls["n"] += 1
        raise OSError(errno.EINVAL, "sendfile refused for this test")

    monkeypatch.setattr(sendio.os, "sendfile", refuse)
    _, result = plane.run(tree, b"copy", streams=2)
    assert isinstance(result, TransferStats), result
    assert calls["n"] >= 1  # tried once per connection, then read+send
    assert not diff_trees(snapshot(tree), snapshot(tmp_path / "dst" / "copy"))


def test_splice_into_file_refused_falls_back(plane: Plane, tree: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.splice
    refused = {"n": 0}

    def splice(src: int, dst: int, count: int, offset_src: Any = None, offset_dst: Any = None,
               flags: int = 0) -> int:
        if offset_dst is not None:  # the pipe -> file leg, as on a filesystem without splice_write
            refused["n"] += 1
            raise OSError(errno.EINVAL, "splice refused for this test")
        return real(src, dst, count, offset_src=offset_src, flags=flags)

    monkeypatch.setattr(receive.os, "splice", splice)
    _, result = plane.run(tree, b"copy", streams=2)
    assert isinstance(result, TransferStats), result
    assert refused["n"] >= 1
    assert not diff_trees(snapshot(tree), snapshot(tmp_path / "dst" / "copy"))


def test_big_file_is_split_across_streams(plane: Plane, tree: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, int]] = []
    real = send_worker.DataWorker.send_range

    def spy(self: Any, index: int, offset: int, length: int) -> None:
        if length >= 1 << 20:
            seen.append((offset, length))
        real(self, index, offset, length)

    monkeypatch.setattr(send_worker.DataWorker, "send_range", spy)
    plane.run(tree, b"copy", streams=2)
    assert sorted(seen) == [(0, 20 << 20), (20 << 20, 20 << 20)]
    assert (tmp_path / "dst" / "copy" / "big.bin").read_bytes() == (tree / "big.bin").read_bytes()


@pytest.mark.parametrize("path", ["copy_file_range", "sendfile", "read+write"])
def test_local_copy_on_every_path(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    from zcrepl.agent.transfer import kcopy, local

    used: dict[str, int] = {"copy_file_range": 0, "sendfile": 0}

    def counted(name: str) -> Callable[..., int]:
        real = getattr(os, name)

        def spy(*args: Any) -> int:
            used[name] += 1
            return int(real(*args))

        return spy

    for name in used:
        monkeypatch.setattr(kcopy.os, name, counted(name))
    paths = kcopy.CopyPaths(copy_file_range=path == "copy_file_range", sendfile=path == "sendfile")
    (tmp_path / "exp").mkdir()
    src, exp = SafeRoot(os.fsencode(tree)), SafeRoot(os.fsencode(tmp_path / "exp"))
    try:
        stats = local.LocalCopy(1, src, exp, (b"copy",), JobOptions(), "here", threading.Event(),
                                lambda _s: None, copy_paths=paths).run()
    finally:
        src.close()
        exp.close()
    assert stats.errors == 0 and stats.bytes_done >= 40 << 20
    assert {name for name, n in used.items() if n} == ({path} & set(used)), used  # that path, and only it
    assert not diff_trees(snapshot(tree), snapshot(tmp_path / "exp" / "copy"))


def test_delta_sends_only_changed_blocks_and_appends(plane: Plane, tmp_path: Path) -> None:
    src = tmp_path / "s"
    src.mkdir()
    big = src / "big.bin"
    big.write_bytes(os.urandom(24 << 20))
    plane.run(src, b"copy", streams=2)
    rewrite(big, 10 << 20, os.urandom(1 << 20))  # 1 MiB changed in the middle, size unchanged
    stats, result = plane.run(src, b"copy", streams=2)
    assert isinstance(result, TransferStats), result
    assert (tmp_path / "dst" / "copy" / "big.bin").read_bytes() == big.read_bytes()
    assert stats.files_done == 1
    assert (1 << 20) <= stats.bytes_done <= (1 << 20) + 2 * (128 << 10), stats.bytes_done
    assert stats.wire_bytes < 2 << 20  # block hashes + the changed range, not 24 MiB
    with open(big, "ab") as f:
        f.write(os.urandom(100_000))
    os.utime(big, ns=(0, 5_000_000_000_000))
    stats, _ = plane.run(src, b"copy", streams=2)
    assert (tmp_path / "dst" / "copy" / "big.bin").read_bytes() == big.read_bytes()
    assert stats.bytes_done <= 100_000 + (128 << 10), stats.bytes_done


def test_delta_result_is_verified_against_the_source_hash(plane: Plane, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from zcrepl.agent.transfer import apply

    src = tmp_path / "s"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(8 << 20))
    plane.run(src, b"copy")
    rewrite(src / "big.bin", 0, b"changed")
    real = apply.copy_range

    def corrupt(s: int, d: int, off: int, n: int, buf: list[bytearray]) -> int:
        done = real(s, d, off, n, buf)
        os.pwrite(d, b"X", off)  # a reused block that came out wrong
        return done

    monkeypatch.setattr(apply, "copy_range", corrupt)
    with pytest.raises(TransferError, match="content hash of the assembled file differs"):
        plane.run(src, b"copy")
    assert plane.results[-1].errors == 1
    before = (tmp_path / "dst" / "copy" / "big.bin").read_bytes()
    assert before[:7] != b"changed"  # the bad assembly never replaced the old file


def test_interrupted_file_resumes_with_only_the_rest(plane: Plane, tmp_path: Path) -> None:
    src = tmp_path / "s"
    src.mkdir()
    size = 48 << 20
    (src / "big.bin").write_bytes(os.urandom(size))
    cancel = Cancel()
    sent: list[int] = []

    def progress(s: TransferStats) -> None:
        sent.append(s.bytes_done)
        if s.bytes_done >= 16 << 20:
            cancel.set()  # the sender dies mid-file: its connections drop

    job_ticket = os.urandom(32)
    done = threading.Event()
    opts = JobOptions(streams=2, bwlimit=24 << 20)

    def serve(ch: Channel, hello: Hello) -> None:
        session = ReceiveSession(ReceiveSpec(99, 1, plane.export, (b"copy",), opts, "dst"), plane.tickets)
        try:
            session.serve_control(ch, hello)
        except Exception:
            pass
        finally:
            done.set()

    plane.tickets.register(job_ticket, Grant(99, 1, time.monotonic() + 30, serve))
    root = SafeRoot(os.fsencode(src))
    try:
        with pytest.raises(TransferError):
            Sender(SendSpec(99, 1, job_ticket, plane.server.address, opts, cancel, progress), root).run()
    finally:
        root.close()
    assert done.wait(10)
    first = max(sent)
    assert (16 << 20) <= first < size
    assert not (tmp_path / "dst" / "copy" / "big.bin").exists()
    assert list((tmp_path / "dst" / "copy" / ".zc.partial").glob("*.part"))

    stats, result = plane.run(src, b"copy", streams=2)
    assert isinstance(result, TransferStats), result
    assert (tmp_path / "dst" / "copy" / "big.bin").read_bytes() == (src / "big.bin").read_bytes()
    # Only what had not arrived travels again (give or take the chunks in flight at the cut).
    assert stats.bytes_done <= size - first + (16 << 20), (stats.bytes_done, first)
    assert stats.bytes_done < size
    assert not list((tmp_path / "dst" / "copy" / ".zc.partial").glob("*.part"))


def _parity_tree(src: Path) -> None:
    src.mkdir()
    with open(src / "sparse.bin", "wb") as f:  # 64 MiB with two 1 MiB data segments
        f.write(b"a" * (1 << 20))
        f.seek(40 << 20)
        f.write(b"b" * (1 << 20))
        f.truncate(64 << 20)
    (src / "sub").mkdir()
    (src / "a").write_bytes(b"linked content")
    os.link(src / "a", src / "sub" / "b")
    os.link(src / "a", src / "c")
    (src / "owned").write_bytes(b"x")
    os.chown(src / "owned", 1234, 5678)
    os.setxattr(src / "a", b"user.zc", b"file attr")
    os.setxattr(src / "sub", b"user.zc", b"dir attr")


def _local(src: Path, dst_export: Path, policy: ExportPolicy | None = None, **options: Any) -> TransferStats:
    from zcrepl.agent.transfer import local

    s, e = SafeRoot(os.fsencode(src)), SafeRoot(os.fsencode(dst_export))
    try:
        return local.LocalCopy(1, s, e, (b"copy",), JobOptions(**options), "here", threading.Event(),
                               lambda _s: None, policy=policy or ExportPolicy()).run()
    finally:
        s.close()
        e.close()


@pytest.mark.parametrize("how", ["network", "local"])
def test_sparse_hardlinks_xattrs_and_owners_survive(plane: Plane, tmp_path: Path, how: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("ownership needs root")
    src = tmp_path / "s"
    _parity_tree(src)
    plane.policy = ExportPolicy(owners=True)  # the export lets peers decide ownership
    if how == "network":
        stats, result = plane.run(src, b"copy", streams=2, xattrs=True)
        assert isinstance(result, TransferStats), result
        assert stats.bytes_done <= 2 << 20 + 100  # the holes never travel
    else:
        _local(src, tmp_path / "dst", plane.policy, xattrs=True)
    dst = tmp_path / "dst" / "copy"
    assert not diff_trees(snapshot(src), snapshot(dst))
    sp = (dst / "sparse.bin").stat()
    assert sp.st_size == 64 << 20 and sp.st_blocks * 512 <= 4 << 20  # still sparse
    a, b, c = ((dst / n).stat() for n in ("a", "sub/b", "c"))
    assert a.st_ino == b.st_ino == c.st_ino and a.st_nlink == 3
    assert ((dst / "owned").stat().st_uid, (dst / "owned").stat().st_gid) == (1234, 5678)
    assert os.getxattr(dst / "a", b"user.zc") == b"file attr"
    assert os.getxattr(dst / "sub", b"user.zc") == b"dir attr"
    # A second run finds everything in place, links included.
    if how == "network":
        again, _ = plane.run(src, b"copy", streams=2, xattrs=True)
        assert again.bytes_done == 0


def test_xattrs_stay_home_without_the_option(plane: Plane, tmp_path: Path) -> None:
    src = tmp_path / "s"
    _parity_tree(src)
    plane.run(src, b"copy")
    assert os.listxattr(tmp_path / "dst" / "copy" / "a") == []


def test_modes_equal_the_sources_with_and_without_a_default_acl(plane: Plane, tmp_path: Path) -> None:
    # New small files are created with their final mode and skip the fchmod where the umask and the directory's
    # ACLs leave that mode whole: the umask would strip 0o777 and 0o666, a default ACL everything but u::rw.
    src = tmp_path / "s"
    (src / "sub").mkdir(parents=True)
    modes = [0o777, 0o666, 0o644, 0o640, 0o600, 0o755, 0o400, 0o000]
    for m in modes:
        for d in (src, src / "sub"):
            (d / f"f{m:o}").write_bytes(b"x" * 100)
            (d / f"f{m:o}").chmod(m)
    set_default_acl(tmp_path / "dst")
    for rel in (b"acl", b"plain"):
        if rel == b"plain":
            os.removexattr(tmp_path / "dst", "system.posix_acl_default")
        _, result = plane.run(src, rel)
        assert isinstance(result, TransferStats) and result.errors == 0, result
        for m in modes:
            for d in (Path(os.fsdecode(rel)), Path(os.fsdecode(rel)) / "sub"):
                assert (tmp_path / "dst" / d / f"f{m:o}").stat().st_mode & 0o7777 == m, (rel, d, oct(m))
