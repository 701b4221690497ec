"""Bugs the fuzz tests found (tests/unit/test_fuzz_*.py), each pinned by a plain test that failed before
its fix."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from zcrepl.agent.transfer import frame as fr
from zcrepl.agent.transfer import opsframe as opf
from zcrepl.agent.transfer.apply import TreeWriter
from zcrepl.agent.transfer.changes import apply_ops
from zcrepl.agent.transfer.channel import Channel
from zcrepl.agent.transfer.frame import Entry, Hello, Kind
from zcrepl.agent.transfer.meta import apply_meta
from zcrepl.agent.transfer.receive import ReceiveSession, ReceiveSpec
from zcrepl.agent.transfer.saferoot import SafeRoot
from zcrepl.agent.transfer.server import TicketBook
from zcrepl.core.errors import ProtocolError, UnsafePath
from zcrepl.core.exportpolicy import DEFAULT_POLICY
from zcrepl.core.types import JobOptions


def test_an_xattr_name_with_nul_is_a_protocol_error(tmp_path: Path) -> None:
    """decode_xattrs took ``user.\\0x`` as a name; applying it (``--xattrs``) made os.getxattr/setxattr
    raise ValueError, which no caller expects: the receiving session crashed instead of dropping the peer."""
    blob = fr.encode_xattrs([(b"user.ok", b"1"), (b"user.\0x", b"v")])
    with pytest.raises(ProtocolError, match="malformed extended attribute"):
        fr.decode_xattrs(blob)
    (tmp_path / "f").write_bytes(b"")
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        with pytest.raises(ProtocolError):
            apply_meta(fd, Entry(Kind.FILE, b"f", 0o644, 0, xattrs=blob), policy=DEFAULT_POLICY, as_root=False,
                       xattrs=True)
    finally:
        os.close(fd)


def test_a_partial_basis_with_a_block_size_is_refused() -> None:
    """decode_basis ignored the block field of a BASIS_PARTIAL (it has no blocks): a frame with garbage there
    decoded as if it were zero. Every field is checked, so nothing a peer sends is silently dropped."""
    good = fr.encode_basis(fr.Basis(7, fr.BasisKind.PARTIAL, intervals=((0, 1 << 20),), digest=b"d" * 16))[5:]
    assert fr.decode_basis(good).intervals == ((0, 1 << 20),)
    bad = good[:5] + (1).to_bytes(4, "big") + good[9:]
    with pytest.raises(ProtocolError, match="partial"):
        fr.decode_basis(bad)


@pytest.mark.parametrize("kind", [Kind.FILE, Kind.DIR, Kind.SYMLINK], ids=["file", "dir", "symlink"])
def test_an_absolute_name_in_the_manifest_is_refused_not_made_relative(tmp_path: Path, kind: Kind) -> None:
    """``/x`` split into the root (``b""``) and ``x``, so TreeWriter admitted it as ``x``: an absolute name
    was normalised instead of refused (DESIGN §3 rule 2), and ``/x`` and ``x`` could both be admitted."""
    (tmp_path / "dst").mkdir()
    with SafeRoot(os.fsencode(tmp_path / "dst")) as root:
        w = TreeWriter(root, JobOptions(), "hostB:/dst", 1)
        try:
            w.admit(Entry(Kind.DIR, b"", 0o755, 0))
            target = b"../outside" if kind is Kind.SYMLINK else b""
            with pytest.raises(UnsafePath, match="empty path component"):
                w.admit(Entry(kind, b"/x", 0o644, 0, target=target))
        finally:
            w.abandon()
    assert os.listdir(tmp_path / "dst") == []


def test_a_rename_onto_the_root_is_refused_not_a_delete(tmp_path: Path) -> None:
    """A CHANGES rename whose target is ``b""`` (the root) validated as ``()`` and took the delete branch:
    the destination silently deleted the rename's source. No source can rename onto its root."""
    (tmp_path / "dst" / "keep").mkdir(parents=True)
    (tmp_path / "dst" / "keep" / "data").write_bytes(b"precious")
    with SafeRoot(os.fsencode(tmp_path / "dst")) as root:
        w = TreeWriter(root, JobOptions(), "hostB:/dst", 1)
        with pytest.raises(ProtocolError, match="root"):
            apply_ops(w, [opf.Op(opf.OP_RENAME, b"keep", b"")])
    assert (tmp_path / "dst" / "keep" / "data").read_bytes() == b"precious"


def test_a_rename_onto_its_own_parent_replaces_the_parent(tmp_path: Path) -> None:
    """``mv a/b x; mv x a`` coalesces to the rename ``a/b -> a``, which the ChangeSet contract says replaces
    ``a`` with ``b``. The receiver cleared ``a`` first (ENOTEMPTY), which took ``a/b`` with it: the data was
    gone and the rename failed with ENOENT."""
    dst = tmp_path / "dst"
    (dst / "a" / "b").mkdir(parents=True)
    (dst / "a" / "b" / "kept").write_bytes(b"data")
    (dst / "a" / "stale").write_bytes(b"old")
    (dst / "f" / "g").mkdir(parents=True)
    (dst / "f" / "g" / "h").write_bytes(b"file onto its grandparent")
    with SafeRoot(os.fsencode(dst)) as root:
        w = TreeWriter(root, JobOptions(), "hostB:/dst", 1)
        missed = apply_ops(w, [opf.Op(opf.OP_RENAME, b"a/b", b"a"), opf.Op(opf.OP_RENAME, b"f/g/h", b"f")])
        assert (missed, w.errors, w.first_error) == ([], 0, "")
    assert sorted(os.listdir(dst)) == ["a", "f"]
    assert os.listdir(dst / "a") == ["kept"] and (dst / "a" / "kept").read_bytes() == b"data"
    assert (dst / "f").read_bytes() == b"file onto its grandparent"


def test_a_directory_attribute_the_destination_refuses_is_an_entry_error(tmp_path: Path) -> None:
    """With ``--xattrs``, an attribute the destination's filesystem refuses on a directory (here one larger
    than ext4 holds) raised OSError out of the session's finish: the whole transfer failed with a bare "No
    space left on device" naming neither host nor path, where the same attribute on a file is one entry
    error naming its path."""
    big = (b"user.big", b"v" * 16000)
    probe = os.open(tmp_path, os.O_RDONLY)
    try:
        os.setxattr(probe, *big)
    except OSError as err:
        refused = err.strerror
    else:
        pytest.skip("this filesystem holds a 16 kB extended attribute")
    finally:
        os.close(probe)
    (tmp_path / "dst").mkdir()
    with SafeRoot(os.fsencode(tmp_path / "dst")) as root:
        w = TreeWriter(root, JobOptions(xattrs=True), "hostB:/dst", 1)
        w.admit(Entry(Kind.DIR, b"", 0o755, 0))
        w.admit(Entry(Kind.DIR, b"d", 0o750, 0, xattrs=fr.encode_xattrs([big])))
        w.end_manifest(2)
        result = w.finish()
    assert result.errors == 1 and result.first_error == f"hostB:/dst/d: {refused}"
    assert (tmp_path / "dst" / "d").is_dir()


def test_a_data_connection_gone_before_its_accept_fails_the_attempt_at_once(tmp_path: Path) -> None:
    """ReceiveSession._serve_data sent the data connection's ACCEPT before its try block: a connection the
    source had already closed raised BrokenPipeError out of the session (the data server logged a crash),
    the attempt went on, and the connection was never marked finished, so SENDER_DONE would wait DATA_WAIT
    (120 s) before failing. Like any broken data connection, it now ends the attempt at once."""
    (tmp_path / "export").mkdir()
    ctl_ours, ctl_theirs = socket.socketpair()
    data_ours, data_theirs = socket.socketpair()
    ctl_ours.settimeout(30)
    with SafeRoot(os.fsencode(tmp_path / "export")) as export:
        tickets = TicketBook()
        spec = ReceiveSpec(job_id=9, attempt=1, export=export, rel=(b"dst",), options=JobOptions(), label="hostB:/dst")
        session = ReceiveSession(spec, tickets)
        outcome: list[object] = []

        def serve() -> None:
            try:
                outcome.append(session.serve_control(Channel(ctl_theirs), Hello(9, 1, b"t" * fr.TICKET_LEN)))
            except Exception as err:
                outcome.append(err)
            finally:
                ctl_theirs.shutdown(socket.SHUT_RDWR)

        receiver = threading.Thread(target=serve)
        receiver.start()
        try:
            ours = Channel(ctl_ours)
            kind, payload = ours.recv_frame()
            assert kind is fr.T.ACCEPT
            ticket = fr.decode_accept(payload)[0]
            grant = tickets.take(ticket, 9, 1, fr.ConnRole.DATA)
            assert grant is not None
            data_ours.close()  # the source's data connection died right after its HELLO
            grant.serve(Channel(data_theirs), Hello(9, 1, ticket, fr.ConnRole.DATA, 0))
            with pytest.raises(ProtocolError, match="closed"):  # the receiver dropped the attempt
                ours.recv_frame()
        finally:
            receiver.join(30)
            for sock in (ctl_ours, ctl_theirs, data_theirs):
                sock.close()
    assert not receiver.is_alive()
    assert isinstance(outcome[0], BrokenPipeError), outcome  # the data connection's failure is the cause
