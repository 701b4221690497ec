"""A streamed manifest with tiny batches and a tiny window: a few hundred files cross many batch boundaries and
many directory closings, over real loopback sockets and real files, and the copy is exact (then --delete, a
dry run, hard links and a resumed file). The sender's window and the receiver's per-directory state are
checked to stay bounded while they do."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from zchelpers import diff_trees, snapshot, write_file

from zcrepl.agent.transfer import listing, window
from zcrepl.agent.transfer.cancel import Cancel
from zcrepl.agent.transfer.channel import Channel
from zcrepl.agent.transfer.frame import Hello
from zcrepl.agent.transfer.receive import ReceiveSession, ReceiveSpec
from zcrepl.agent.transfer.saferoot import SafeRoot
from zcrepl.agent.transfer.send import Sender, SendSpec
from zcrepl.agent.transfer.server import DataServer, Grant, TicketBook
from zcrepl.core.config import AgentConfig
from zcrepl.core.errors import TransferError
from zcrepl.core.types import JobOptions, TransferStats

BATCH, WINDOW = 5, 8


class Plane:
    """A receiving data server; ``run`` sends one tree to it and keeps both ends' objects for inspection."""

    def __init__(self, dst_export: Path) -> None:
        self.tickets = TicketBook()
        self.server = DataServer("127.0.0.1", 0, self.tickets, AgentConfig())
        self.server.start()
        self.export = SafeRoot(os.fsencode(dst_export))
        self.jobs = 0
        self.held: list[int] = []  # the receiver's held names and directories, sampled at every entry or run

    def run(self, src: Path, cancel: Cancel | None = None, on_progress: Any = None,
            **options: Any) -> tuple[Sender, Any]:
        self.jobs += 1
        job, ticket, opts = self.jobs, os.urandom(32), JobOptions(**options)
        done = threading.Event()
        result: list[Any] = []

        def serve(ch: Channel, hello: Hello) -> None:
            session = ReceiveSession(ReceiveSpec(job, 1, self.export, (b"copy",), opts, "dst"), self.tickets)
            try:
                result.append(session.serve_control(ch, hello))
            except Exception as err:
                result.append(err)
            finally:
                done.set()

        self.tickets.register(ticket, Grant(job, 1, time.monotonic() + 30, serve))
        spec = SendSpec(job, 1, ticket, self.server.address, opts, cancel or Cancel(),
                        on_progress or (lambda _s: None))
        root = SafeRoot(os.fsencode(src))
        sender = Sender(spec, root)
        try:
            sender.run()
        finally:
            root.close()
            assert done.wait(10)
        return sender, result[0]

    def close(self) -> None:
        self.server.stop()
        self.export.close()


@pytest.fixture
def plane(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Plane]:
    monkeypatch.setattr(window, "BATCH", BATCH)
    monkeypatch.setattr(window, "WINDOW", WINDOW)
    (tmp_path / "dst").mkdir()
    p = Plane(tmp_path / "dst")
    real = listing.Listing.admit

    def admit(self: listing.Listing, e: Any) -> tuple[bytes, ...]:
        p.held.append(self.held())
        return real(self, e)

    real_run = listing.Listing.admit_run

    def admit_run(self: listing.Listing, prefix: bytes, entries: list[Any], leaves: list[bytes]) -> tuple[bytes, ...]:
        p.held.append(self.held())
        return real_run(self, prefix, entries, leaves)

    monkeypatch.setattr(listing.Listing, "admit", admit)
    monkeypatch.setattr(listing.Listing, "admit_run", admit_run)
    yield p
    p.close()


def make(src: Path, dirs: int = 30, per: int = 9) -> None:
    """``dirs`` directories of ``per`` files (one nested level every third), an empty one, links of both kinds."""
    for i in range(dirs):
        d = src / f"d{i:02d}" / ("sub" if i % 3 == 0 else "")
        d.mkdir(parents=True)
        for j in range(per):
            write_file(d / f"f{j}", b"%d.%d " % (i, j) * (j + 1))
    (src / "empty").mkdir()
    os.symlink("d01/f1", src / "sym")
    os.link(src / "d01" / "f2", src / f"d{dirs - 1:02d}" / "hard")


def test_many_batches_copy_exactly_with_bounded_state(plane: Plane, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make(src)
    sender, result = plane.run(src)
    assert isinstance(result, TransferStats), result
    assert not diff_trees(snapshot(src), snapshot(tmp_path / "dst" / "copy"))
    assert result.files_done == 30 * 9 + 1  # the hard link counts as made
    assert os.stat(tmp_path / "dst" / "copy" / "d29" / "hard").st_ino == os.stat(
        tmp_path / "dst" / "copy" / "d01" / "f2").st_ino
    # The sender kept at most a window and a batch of file entries; the receiver about one directory's names
    # besides the directories announced and not yet listed (the root's 32, then the frontier).
    assert 0 < sender.files.peak <= WINDOW + BATCH
    assert len(sender.files) == 0 and not sender.bases and not sender._ranges_left
    assert max(plane.held) <= 2 * 32 + 9 + 2
    again, _ = plane.run(src)
    assert again.final is not None and again.final.files_done == 0


def test_delete_and_dry_run_across_closed_directories(plane: Plane, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst" / "copy"
    make(src)
    plane.run(src)
    for i in (0, 7, 22):
        write_file(dst / f"d{i:02d}" / "extra", b"x")
    (dst / "d05" / "gone-dir").mkdir()
    write_file(dst / "d05" / "gone-dir" / "x", b"x")
    (src / "d11" / "f3").unlink()
    _, plan = plane.run(src, delete=True, dry_run=True)
    assert plan.plan_deleted == 3 + 2 + 1, plan  # three files, a directory and its file, the one removed
    assert (dst / "d11" / "f3").exists()
    _, result = plane.run(src, delete=True)
    assert isinstance(result, TransferStats), result
    assert result.deleted == 6
    assert not diff_trees(snapshot(src), snapshot(dst))


def test_a_resumed_file_among_many_small_ones(plane: Plane, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst" / "copy"
    make(src, dirs=12)
    size = 24 << 20
    (src / "d06" / "big.bin").write_bytes(os.urandom(size))
    cancel = Cancel()

    def progress(s: TransferStats) -> None:
        if s.bytes_done >= 8 << 20:
            cancel.set()  # the sender dies mid-file: its connections drop

    with pytest.raises(TransferError):
        plane.run(src, cancel, progress, streams=2, bwlimit=16 << 20)
    assert list((dst / ".zc.partial").glob("*.part"))
    sender, result = plane.run(src, streams=2)
    assert isinstance(result, TransferStats), result
    assert not diff_trees(snapshot(src), snapshot(dst))
    assert sender.final is not None and sender.final.bytes_done < size  # only the rest travelled
