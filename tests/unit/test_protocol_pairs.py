"""The data-plane protocol end to end over socketpairs (``SendSpec.dial``): the real Sender and the real
ReceiveSession, no daemons, no TCP, no TLS; a hostile destination is a function of this test."""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path

import pytest
from pairplane import pairs, ticket_server
from zchelpers import diff_trees, make_tree, snapshot

from zcrepl.agent.transfer import frame as fr
from zcrepl.agent.transfer.cancel import Cancel
from zcrepl.agent.transfer.channel import Channel, ZeroCopy
from zcrepl.agent.transfer.frame import Hello
from zcrepl.agent.transfer.receive import ReceiveSession, ReceiveSpec
from zcrepl.agent.transfer.saferoot import SafeRoot
from zcrepl.agent.transfer.send import Sender
from zcrepl.agent.transfer.sendio import SendSpec
from zcrepl.agent.transfer.server import Grant, TicketBook
from zcrepl.core.errors import TransferError
from zcrepl.core.types import JobOptions, TransferStats

TICKET = b"t" * fr.TICKET_LEN


def _replicate(src: Path, dst: Path, streams: int, zero_copy: ZeroCopy) -> tuple[TransferStats, object]:
    tickets = TicketBook()
    outcome: list[object] = []
    opts = JobOptions(streams=streams)
    with SafeRoot(os.fsencode(dst)) as export:

        def serve(ch: Channel, hello: Hello) -> None:
            session = ReceiveSession(ReceiveSpec(9, 1, export, (b"copy",), opts, "hostB:/dst/copy",
                                                 zero_copy=zero_copy), tickets)
            try:
                outcome.append(session.serve_control(ch, hello))
            except Exception as err:
                outcome.append(err)

        tickets.register(TICKET, Grant(9, 1, time.monotonic() + 30, serve))
        with pairs(ticket_server(tickets)) as p, SafeRoot(os.fsencode(src)) as root:
            spec = SendSpec(9, 1, TICKET, ("pair", 0), opts, Cancel(), lambda _s: None, io_timeout=30,
                            zero_copy=zero_copy, dial=p.dial)
            stats = Sender(spec, root).run()
    return stats, outcome[0]


@pytest.mark.parametrize("zero_copy", [ZeroCopy(), ZeroCopy(sendfile=False, splice=False)],
                         ids=["zero-copy", "copying"])
def test_a_tree_crosses_socketpairs_and_a_second_run_sends_nothing(tmp_path: Path, zero_copy: ZeroCopy) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, files=40)
    dst.mkdir()
    stats, result = _replicate(src, dst, 2, zero_copy)
    assert isinstance(result, TransferStats), result
    assert stats.files_done == stats.files_total > 0 and stats.errors == 0
    assert not diff_trees(snapshot(src), snapshot(dst / "copy"))
    again, _ = _replicate(src, dst, 2, zero_copy)
    assert (again.files_done, again.bytes_done) == (0, 0)


_HEAD = struct.Struct("!6QI")
_GOOD = fr.encode_result(fr.Result(files_done=1, errors=1, first_error="hostB:/d/x: EACCES"))[5:]  # the payload


@pytest.mark.parametrize("result", [
    b'{"errors": 0}', _GOOD[:-1], _GOOD + b"x", _HEAD.pack(0, 0, 0, 0, 0, 1, fr.MAX_RESULT_TEXT + 1),
    _HEAD.pack(0, 0, 0, 0, 0, 1, 2) + b"\xff{", _GOOD[: _HEAD.size - 1]],
    ids=["json", "short-text", "trailing", "overlong-text", "not-utf8", "short-header"])
def test_a_malformed_result_from_the_destination_is_a_protocol_error(tmp_path: Path, result: bytes) -> None:
    """The source once read RESULT with a bare json.loads (a list crashed Sender.run, deep nesting raised
    RecursionError in its reader thread); it is binary now, and a lying destination is still a protocol error
    that fails the attempt: every length is checked against the frame, the text must be UTF-8. The destination
    is this test: it grants one data connection, asks for nothing, and ends with ``result``."""
    (tmp_path / "src").mkdir()

    def destination(sock: socket.socket) -> None:
        ch = Channel(sock)
        hello = fr.decode_hello(ch.recv_frame()[1])
        if hello.role is fr.ConnRole.DATA:
            ch.send(fr.encode_accept([]))
            while ch.recv_frame()[0] is not fr.T.DATA_DONE:
                pass
            return
        ch.send(fr.encode_accept([b"d" * fr.TICKET_LEN]))
        while ch.recv_frame()[0] is not fr.T.MANIFEST_END:
            pass
        ch.send(fr.frame(fr.T.NEED_END))
        while ch.recv_frame()[0] is not fr.T.SENDER_DONE:
            pass
        ch.send(fr.frame(fr.T.RESULT, result))

    with pairs(destination) as p, SafeRoot(os.fsencode(tmp_path / "src")) as root:
        spec = SendSpec(9, 1, TICKET, ("pair", 0), JobOptions(), Cancel(), lambda _s: None,
                        io_timeout=30, dial=p.dial)
        with pytest.raises(TransferError, match="RESULT frame"):
            Sender(spec, root).run()
