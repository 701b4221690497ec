"""Source files that vanish, change or cannot be opened between the scan and their copy: reported per file
(rsync's semantics: vanished is a skip, the rest are file errors), and the rest of the tree is copied.

A real same-host copy (LocalCopy: real files, the kernel's copy paths) whose scan is made to meddle with a
file right after it recorded the file's entry and before anyone could open it: deterministic, no timing.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pairplane import pairs, ticket_server
from zchelpers import write_file

from zcrepl.agent.transfer import frame as fr
from zcrepl.agent.transfer import local, send, send_worker
from zcrepl.agent.transfer.cancel import Cancel
from zcrepl.agent.transfer.channel import Channel
from zcrepl.agent.transfer.frame import Entry, Hello
from zcrepl.agent.transfer.receive import ReceiveSession, ReceiveSpec
from zcrepl.agent.transfer.saferoot import SafeRoot
from zcrepl.agent.transfer.scan import Scanner, Skips, source_changed, source_trouble
from zcrepl.agent.transfer.send import Sender
from zcrepl.agent.transfer.sendio import SendSpec
from zcrepl.agent.transfer.server import Grant, TicketBook
from zcrepl.core.errors import UnsafePath
from zcrepl.core.types import SKIPPED_LISTED, Compress, JobOptions, TransferStats


def _grow(p: Path) -> None:
    with open(p, "ab") as f:
        f.write(b" and more")


ACTS: dict[bytes, Callable[[Path], None]] = {
    b"d/gone": lambda p: p.unlink(),
    b"d/grown": _grow,
    b"d/swapped": lambda p: (p.unlink(), p.symlink_to("/etc/hostname")),
}


class MeddlingScanner(Scanner):
    """A real scan; right after it made the entries of a directory's files, before it hands them on, the files
    named in ACTS are acted on."""

    top = Path()

    def _walk(self, top: tuple[bytes, ...]) -> Iterator[list[Entry]]:
        for chunk in super()._walk(top):
            for e in chunk:
                if e.path in ACTS:
                    ACTS[e.path](self.top / os.fsdecode(e.path))
            yield chunk


def test_a_same_host_copy_reports_each_file_and_copies_the_rest(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "d").mkdir(parents=True)
    (dst / "copy" / "d").mkdir(parents=True)
    for name in ("a", "d/gone", "d/grown", "d/swapped", "d/z"):
        write_file(src / name, b"content of " + name.encode())
    write_file(dst / "copy" / "d" / "grown", b"the old copy")
    MeddlingScanner.top = src
    monkeypatch.setattr(local, "Scanner", MeddlingScanner)
    s, d = SafeRoot(os.fsencode(src)), SafeRoot(os.fsencode(dst))
    try:
        copy = local.LocalCopy(1, s, d, (b"copy",), JobOptions(), "here:/dst/copy", threading.Event(),
                               lambda _s: None, workers=1)
        stats = copy.run()
    finally:
        s.close()
        d.close()
    assert (stats.errors, stats.file_errors, stats.entries_skipped, stats.files_done) == (0, 1, 2, 2)
    listed = {os.fsdecode(x.path): (x.error, x.reason) for x in copy.skips.listed}
    assert listed["d/grown"] == (True, "changed at the source while it was read: not replicated, and the "
                                       "destination keeps what it has there; run the job again once the file is "
                                       "quiet (or use a watch rule)")
    assert listed["d/gone"] == (False, "vanished from the source during the job (No such file or directory): "
                                       "not replicated")
    assert listed["d/swapped"][0] is False and "symlink" in listed["d/swapped"][1]
    out = dst / "copy"
    assert (out / "a").read_bytes() == b"content of a" and (out / "d" / "z").read_bytes() == b"content of d/z"
    assert (out / "d" / "grown").read_bytes() == b"the old copy"
    assert not (out / "d" / "gone").exists() and not (out / "d" / "swapped").exists()
    assert sorted(p.name for p in (out / "d").iterdir()) == ["grown", "z"]  # no temp file left


def test_the_kinds_of_trouble_and_their_bounded_lists() -> None:
    skips = Skips(7)
    for i in range(SKIPPED_LISTED + 3):
        source_trouble(skips, b"gone%d" % i, FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT)))
        source_trouble(skips, b"eio%d" % i, OSError(errno.EIO, os.strerror(errno.EIO)))
    source_trouble(skips, b"dir-gone/f", NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR)))
    source_trouble(skips, b"now-a-link", UnsafePath("now-a-link: it is a symlink"))
    source_changed(skips, b"log")
    assert (skips.total, skips.errors, skips.special) == (SKIPPED_LISTED + 5, SKIPPED_LISTED + 4, 0)
    assert len(skips.listed) == 2 * SKIPPED_LISTED
    assert sum(x.error for x in skips.listed) == SKIPPED_LISTED
    assert skips.listed[1].reason.startswith("cannot be read at the source (Input/output error): not replicated")
    # A watch session reports only what the next change set cannot fix.
    watch = Skips(8)
    source_trouble(watch, b"gone", FileNotFoundError(errno.ENOENT, "No such file or directory"), watch=True)
    source_changed(watch, b"log", watch=True)
    source_trouble(watch, b"locked", PermissionError(errno.EACCES, "Permission denied"), watch=True)
    assert (watch.total, watch.errors, [x.path for x in watch.listed]) == (0, 1, [b"locked"])


def test_the_controller_keeps_a_hundred_of_each_kind() -> None:
    from zcrepl.controller import validate
    from zcrepl.controller.runs import Run, skip_note
    from zcrepl.core.types import Endpoint, Phase, Role, Skipped, TransferReport, TransferStats

    items = tuple(Skipped(b"e%d" % i, "unreadable", True) for i in range(SKIPPED_LISTED + 7)) + tuple(
        Skipped(b"s%d" % i, "a FIFO") for i in range(SKIPPED_LISTED + 3))
    stats = TransferStats(entries_skipped=SKIPPED_LISTED + 3, file_errors=SKIPPED_LISTED + 7)
    r = validate.report(TransferReport(1, 1, Role.SENDER, Phase.DONE, stats, skipped=items))
    assert sum(x.error for x in r.skipped) == SKIPPED_LISTED and len(r.skipped) == 2 * SKIPPED_LISTED
    assert r.skipped[0] == Skipped(b"s0", "a FIFO") and r.skipped[-1] == Skipped(b"e99", "unreadable", True)
    run = Run(1, 1, b"", 0.0, Endpoint("hostA", b"/a"))
    run.add_skipped(r)
    assert run.entries_skipped() == SKIPPED_LISTED + 3 and len(run.skipped) == 2 * SKIPPED_LISTED
    assert skip_note(stats, run) == (f"; {SKIPPED_LISTED + 7} files could not be copied (first: e0: unreadable); "
                                     f"{SKIPPED_LISTED + 3} entries skipped (first: s0: a FIFO); zc-ctl job 1 "
                                     "lists them")


@pytest.mark.parametrize("compress", [Compress.OFF, Compress.ON], ids=["raw", "zstd"])
def test_a_network_send_of_small_files_reports_each_and_never_sends_one_torn(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch,
                                                                             compress: Compress) -> None:
    """The sender's small-file path (read into its output buffer, not sendfile) over socketpairs to a real
    receiver: a file changed before it is opened, one changed while it is read, one vanished and one swapped
    for a symlink are reported; the destination keeps its old copies, and the rest arrive."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "d").mkdir(parents=True)
    (dst / "copy" / "d").mkdir(parents=True)
    for name in ("a", "d/gone", "d/grown", "d/swapped", "d/torn", "d/z"):
        write_file(src / name, b"content of " + name.encode())
    write_file(dst / "copy" / "d" / "grown", b"the old copy")
    write_file(dst / "copy" / "d" / "torn", b"the old torn")
    MeddlingScanner.top = src
    monkeypatch.setattr(send, "Scanner", MeddlingScanner)
    real_pread = send_worker.os.pread

    def pread(fd: int, n: int, offset: int) -> bytes:
        data = real_pread(fd, n, offset)
        if os.readlink(f"/proc/self/fd/{fd}").endswith("/d/torn"):
            _grow(src / "d" / "torn")  # after the bytes were read: only the check after the read can see it
        return data

    monkeypatch.setattr(send_worker.os, "pread", pread)
    tickets = TicketBook()
    outcome: list[object] = []
    opts = JobOptions(compress=compress)
    with SafeRoot(os.fsencode(dst)) as export:

        def serve(ch: Channel, hello: Hello) -> None:
            session = ReceiveSession(ReceiveSpec(9, 1, export, (b"copy",), opts, "hostB:/dst/copy"), tickets)
            outcome.append(session.serve_control(ch, hello))

        tickets.register(b"t" * fr.TICKET_LEN, Grant(9, 1, time.monotonic() + 30, serve))
        with pairs(ticket_server(tickets)) as p, SafeRoot(os.fsencode(src)) as root:
            spec = SendSpec(9, 1, b"t" * fr.TICKET_LEN, ("pair", 0), opts, Cancel(), lambda _s: None, io_timeout=30,
                            dial=p.dial)
            sender = Sender(spec, root)
            stats = sender.run()
    assert isinstance(outcome[0], TransferStats), outcome
    assert (stats.errors, stats.file_errors, stats.entries_skipped, stats.files_done) == (0, 2, 2, 2)
    listed = {os.fsdecode(x.path): x.error for x in sender.skips.listed}
    assert listed == {"d/gone": False, "d/swapped": False, "d/grown": True, "d/torn": True}
    out = dst / "copy"
    assert (out / "a").read_bytes() == b"content of a" and (out / "d" / "z").read_bytes() == b"content of d/z"
    assert (out / "d" / "grown").read_bytes() == b"the old copy"
    assert (out / "d" / "torn").read_bytes() == b"the old torn"
    assert sorted(p.name for p in (out / "d").iterdir()) == ["grown", "torn", "z"]  # no temp file left
