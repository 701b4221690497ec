"""Tests for zcrepl.agent.transfer.frame and .channel: encode/decode round trips, bounded decoding, Channel over a
socketpair."""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator

import pytest

from zcrepl.agent.transfer import entrycodec as ec
from zcrepl.agent.transfer import frame as fr
from zcrepl.agent.transfer.channel import Channel
from zcrepl.agent.transfer.frame import (
    MAGIC,
    MAX_BATCH,
    MAX_DIGEST,
    MAX_FRAME,
    MAX_TARGET,
    TICKET_LEN,
    VERSION,
    Entry,
    FileHead,
    Hello,
    Kind,
    T,
)
from zcrepl.core.errors import ProtocolError

HEAD = struct.Struct("!BI")
ENTRY = struct.Struct("!BIqQHHBIIBI")
TICKET = bytes(range(TICKET_LEN))
MTIME = 1_700_000_000_123_456_789


def split(data: bytes) -> tuple[T, bytes]:
    """Strip and check the frame header; return (type, payload)."""
    kind, length = HEAD.unpack_from(data)
    assert length == len(data) - HEAD.size
    return T(kind), data[HEAD.size :]


def raw_entry(kind: int = 1, mode: int = 0o644, mtime: int = MTIME, size: int = 0, path: bytes = b"f",
              target: bytes = b"", digest: bytes = b"", tlen: int | None = None, dlen: int | None = None,
              flags: int = 0, xattrs: bytes = b"") -> bytes:
    tl = len(target) if tlen is None else tlen
    dl = len(digest) if dlen is None else dlen
    head = ENTRY.pack(kind, mode, mtime, size, len(path), tl, dl, 0, 0, flags, len(xattrs))
    return head + path + target + digest + xattrs


def batch(*entries: bytes, count: int | None = None) -> bytes:
    """One run of names at the root: the entries' headers, then their bodies."""
    head = struct.pack("!I", len(entries) if count is None else count)
    if not entries:
        return head
    run = struct.pack("!HH", len(entries), 0)
    return head + run + b"".join(e[: ENTRY.size] for e in entries) + b"".join(e[ENTRY.size :] for e in entries)


@pytest.fixture(autouse=True)
def _no_fd_leak() -> Iterator[None]:
    before = len(os.listdir("/proc/self/fd"))
    yield
    assert len(os.listdir("/proc/self/fd")) == before, "file descriptors leaked"


# -- frame ------------------------------------------------------------------------------------------


def test_frame_header() -> None:
    assert fr.frame(T.ACCEPT) == bytes([T.ACCEPT, 0, 0, 0, 0])
    assert fr.frame(T.RESULT, b"xyz") == bytes([T.RESULT, 0, 0, 0, 3]) + b"xyz"


def test_frame_refuses_oversized_payload() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        fr.frame(T.RESULT, b"\0" * (MAX_FRAME + 1))


# -- HELLO ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hello", [Hello(1, 1, TICKET), Hello(2**64 - 1, 2**32 - 1, b"\xff" * TICKET_LEN),
                                   Hello(0, 0, b"\0" * TICKET_LEN), Hello(3, 1, TICKET, fr.ConnRole.DATA, 0),
                                   Hello(3, 1, TICKET, fr.ConnRole.CONTROL, 16)])
def test_hello_round_trip(hello: Hello) -> None:
    kind, payload = split(fr.encode_hello(hello))
    assert kind is T.HELLO
    assert fr.decode_hello(payload) == hello


def _hello_payload(magic: bytes = MAGIC, version: int = VERSION, role: int = 0) -> bytes:
    return struct.pack(f"!4sHQI{TICKET_LEN}sBH", magic, version, 7, 1, TICKET, role, 1)


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (_hello_payload(magic=b"HTTP"), "bad magic"),
        (_hello_payload(version=VERSION + 1), f"version {VERSION + 1}"),
        (_hello_payload(version=0), "version 0"),
        (_hello_payload()[:-1], "HELLO of 52 bytes"),
        (_hello_payload() + b"\0", "HELLO of 54 bytes"),
        (b"", "bad magic"),
        (_hello_payload(role=7), "unknown role 7"),
    ],
    ids=["magic", "newer-version", "older-version", "short", "long", "empty", "role"],
)
def test_hello_rejects(payload: bytes, needle: str) -> None:
    with pytest.raises(ProtocolError, match=needle):
        fr.decode_hello(payload)


# -- ENTRIES ----------------------------------------------------------------------------------------

ENTRIES = [
    Entry(Kind.DIR, b"", 0o755, MTIME),
    Entry(Kind.FILE, b"a/file.txt", 0o644, MTIME, size=12345, digest=b"\x01" * 16),
    Entry(Kind.FILE, b"\xff\n", 0o600, -1, size=0),
    Entry(Kind.FILE, b"big", 0o644, 0, size=1 << 60, digest=b"\xaa" * MAX_DIGEST),
    Entry(Kind.SYMLINK, b"link", 0o777, MTIME, target=b"../\xfe\ntarget"),
    Entry(Kind.SYMLINK, b"long", 0o777, MTIME, target=b"t" * MAX_TARGET),
    Entry(Kind.DIR, "d\u00e9j\u00e0/sub".encode(), 0o2775, MTIME),
    Entry(Kind.HARDLINK, b"deep/link", 0o644, MTIME, target=b"d/" * 3000 + b"f"),  # past PATH_MAX: a manifest path
    Entry(Kind.DIR, b"locked", 0o000, MTIME, flags=fr.F_UNREADABLE),
    Entry(Kind.FILE, b"secret", 0o000, MTIME, flags=fr.F_UNREADABLE),
]


@pytest.mark.parametrize("entries", [[], ENTRIES[:1], ENTRIES], ids=["empty", "one", "mixed"])
def test_entries_round_trip(entries: list[Entry]) -> None:
    kind, payload = split(ec.encode_entries(entries))
    assert kind is T.ENTRIES
    out = ec.decode_entries(payload)
    assert out == entries
    assert all(isinstance(e.kind, Kind) for e in out)


def test_entries_full_batch_round_trip() -> None:
    entries = [Entry(Kind.FILE, b"f%d" % i, 0o644, i, size=i) for i in range(MAX_BATCH)]
    assert ec.decode_entries(split(ec.encode_entries(entries))[1]) == entries


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b"", "too short"),
        (b"\0\0\0", "too short"),
        (batch(count=MAX_BATCH + 1), f"exceeds {MAX_BATCH}"),
        (batch(count=0xFFFFFFFF), "exceeds"),
        (batch(raw_entry()[: ENTRY.size - 1], count=1), "entry header"),
        (batch(count=1), "entry header"),
        (batch(raw_entry(), count=2), "entry header"),
        (batch(raw_entry(path=b"abcdef"))[:-1], "entry body"),
        (batch(raw_entry(kind=3, target=b"tgt"))[:-1], "entry body"),
        (batch(raw_entry(digest=b"d" * 8))[:-1], "entry body"),
        (batch(raw_entry()) + b"\0", "trailing bytes"),
        (batch(raw_entry(), count=0), "trailing bytes"),
        (batch(raw_entry(kind=0)), "unknown kind 0"),
        (batch(raw_entry(kind=5)), "unknown kind 5"),
        (batch(raw_entry(kind=2, size=1)), "non-file entry with a size"),
        (batch(raw_entry(kind=3, size=1, target=b"t")), "non-file entry with a size"),
        (batch(raw_entry(kind=1, target=b"t")), "neither a symlink nor a hard link"),
        (batch(raw_entry(kind=2, target=b"t")), "neither a symlink nor a hard link"),
        (batch(raw_entry(kind=3, target=b"t" * (MAX_TARGET + 1))), "oversized"),
        (batch(raw_entry(digest=b"d" * (MAX_DIGEST + 1))), "oversized"),
        (batch(raw_entry(size=(1 << 60) + 1)), "out-of-range"),
        (batch(raw_entry(mtime=-(1 << 62) - 1)), "out-of-range"),
        (batch(raw_entry(flags=8)), "unknown flags"),
        (batch(raw_entry(kind=4, target=b"f", flags=fr.F_UNREADABLE)), "unknown flags"),
        (batch(raw_entry(kind=2, flags=1)), "non-file entry with a size or flags"),
        (batch(raw_entry(xattrs=b"x" * (64 << 10 + 1))), "oversized"),
    ],
    ids=[
        "empty", "short-count", "batch-too-big", "batch-u32-max", "cut-header", "missing-entry", "second-missing",
        "cut-path", "cut-target", "cut-digest", "trailing", "count-too-low", "kind-0", "kind-5", "dir-with-size",
        "symlink-with-size", "file-with-target", "dir-with-target", "target-too-long", "digest-too-long",
        "size-too-big", "mtime-too-small", "unknown-flag", "hardlink-flagged", "dir-sparse", "xattrs-too-big",
    ],
)
def test_entries_rejects(payload: bytes, needle: str) -> None:
    with pytest.raises(ProtocolError, match=needle):
        ec.decode_entries(payload)


def run(prefix: bytes, *entries: bytes) -> bytes:
    return struct.pack("!HH", len(entries), len(prefix)) + prefix + b"".join(e[: ENTRY.size] for e in entries) + \
        b"".join(e[ENTRY.size :] for e in entries)


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (struct.pack("!I", 2) + run(b"a/", raw_entry()) + run(b"a/", raw_entry(path=b"g")), "predecessor"),
        (struct.pack("!I", 1) + run(b"a", raw_entry()), "bad prefix"),
        (struct.pack("!I", 1) + run(b"a/") + run(b"b/", raw_entry()), "no entries"),
        (struct.pack("!I", 1) + run(b"", raw_entry(path=b"a/b")), "'/' in its name"),
        (struct.pack("!I", 1) + run(b"a/", raw_entry())[:3], "run header"),
    ],
    ids=["same-directory-twice", "prefix-without-slash", "empty-run", "slash-in-leaf", "cut-run-header"],
)
def test_entries_runs_are_canonical(payload: bytes, needle: str) -> None:
    """One encoding per batch: a run per change of directory, each name one component of it."""
    with pytest.raises(ProtocolError, match=needle):
        ec.decode_runs(payload)


def test_entries_runs_share_their_directory() -> None:
    entries = [Entry(Kind.DIR, b"", 0o755, 0), Entry(Kind.DIR, b"a", 0o755, 0), Entry(Kind.FILE, b"a/x", 0o644, 0),
               Entry(Kind.FILE, b"a/y", 0o644, 0), Entry(Kind.FILE, b"z", 0o644, 0), Entry(Kind.FILE, b"/w", 0o644, 0)]
    runs = ec.decode_runs(split(ec.encode_entries(entries))[1])
    assert [(r.prefix, r.leaves) for r in runs] == [(b"", [b"", b"a"]), (b"a/", [b"x", b"y"]), (b"", [b"z"]),
                                                   (b"/", [b"w"])]
    assert [e for r in runs for e in r.entries] == entries


def test_entries_oversized_lengths_rejected_before_reading_body() -> None:
    # Header claims a huge target but no body follows: the bound check fires, not the truncation check.
    with pytest.raises(ProtocolError, match="oversized"):
        ec.decode_entries(batch(raw_entry(kind=3, tlen=0xFFFF)))


# -- NEED, FILE, u64, text --------------------------------------------------------------------------


@pytest.mark.parametrize("indices", [[], [0], [1, 5, 2**32 - 1], list(range(1000))], ids=["0", "1", "3", "1000"])
def test_need_round_trip(indices: list[int]) -> None:
    kind, payload = split(fr.encode_need(indices))
    assert kind is T.NEED
    assert fr.decode_need(payload) == indices


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b"", "too short"),
        (b"\0\0", "too short"),
        (struct.pack("!I", 2) + struct.pack("!I", 1), "disagrees"),
        (struct.pack("!II", 1, 1) + b"\0", "disagrees"),
        (struct.pack("!I", 0xFFFFFFFF), "disagrees"),
        (struct.pack("!I", 0) + b"\0\0\0\0", "disagrees"),
    ],
    ids=["empty", "short", "missing-index", "extra-byte", "huge-count", "count-zero-with-data"],
)
def test_need_rejects(payload: bytes, needle: str) -> None:
    with pytest.raises(ProtocolError, match=needle):
        fr.decode_need(payload)


@pytest.mark.parametrize("head", [FileHead(0, 0, 0, 0, 0, 0o644), FileHead(2**32 - 1, 0, 2**59, 2**60, -MTIME, 0o7777),
                                  FileHead(3, 100, 12245, 12345, MTIME, 0o100600)])
def test_file_round_trip(head: FileHead) -> None:
    kind, payload = split(fr.encode_file(head))
    assert kind is T.FILE
    assert fr.decode_file(payload) == head


@pytest.mark.parametrize("length", [0, 39, 41])
def test_file_rejects_wrong_length(length: int) -> None:
    with pytest.raises(ProtocolError, match=f"FILE frame of {length} bytes, expected 40"):
        fr.decode_file(b"\0" * length)


@pytest.mark.parametrize(("offset", "length", "total"), [(1, 10, 10), (10, 1, 10), (0, 1, 0), (0, 1, 2**61)])
def test_file_rejects_ranges_outside_the_file(offset: int, length: int, total: int) -> None:
    payload = struct.pack("!IQQQqI", 1, offset, length, total, 0, 0o644)
    with pytest.raises(ProtocolError, match="outside"):
        fr.decode_file(payload)


@pytest.mark.parametrize("n", [0, 1, 16])
def test_accept_round_trip(n: int) -> None:
    tickets = [bytes([i]) * TICKET_LEN for i in range(n)]
    kind, payload = split(fr.encode_accept(tickets))
    assert kind is T.ACCEPT and fr.decode_accept(payload) == tickets


@pytest.mark.parametrize("payload", [b"", b"\0", struct.pack("!H", 1), struct.pack("!H", 17) + b"x" * 32 * 17])
def test_accept_rejects(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        fr.decode_accept(payload)


@pytest.mark.parametrize("value", [0, 1, 2**63, 2**64 - 1])
@pytest.mark.parametrize("kind", [T.MANIFEST_END, T.FILE_END])
def test_u64_round_trip(kind: T, value: int) -> None:
    k, payload = split(fr.encode_u64(kind, value))
    assert k is kind
    assert fr.decode_u64(payload, kind.name) == value


@pytest.mark.parametrize("length", [0, 7, 9])
def test_u64_rejects_wrong_length(length: int) -> None:
    with pytest.raises(ProtocolError, match=f"MANIFEST_END frame of {length} bytes"):
        fr.decode_u64(b"\0" * length, "MANIFEST_END")


@pytest.mark.parametrize("text", ["", "no space left on device", "caf\u00e9 \u65e5\u672c", "line\nbreak"])
@pytest.mark.parametrize("kind", [T.REFUSE, T.ABORT, T.RESULT])
def test_text_round_trip(kind: T, text: str) -> None:
    k, payload = split(fr.encode_text(kind, text))
    assert k is kind
    assert fr.decode_text(payload) == text


def test_text_with_surrogates_is_escaped() -> None:
    _, payload = split(fr.encode_text(T.ABORT, "bad \udcff name"))
    assert fr.decode_text(payload) == "bad \\udcff name"


def test_text_is_truncated_to_64k() -> None:
    _, payload = split(fr.encode_text(T.ABORT, "x" * 100_000))
    assert len(payload) == 65536
    assert fr.decode_text(b"y" * 70_000) == "y" * 65536


def test_decode_text_tolerates_invalid_utf8() -> None:
    assert fr.decode_text(b"a\xffb") == "a\ufffdb"


# -- Channel over a socketpair ----------------------------------------------------------------------


@pytest.fixture
def pair() -> Iterator[tuple[Channel, socket.socket]]:
    a, b = socket.socketpair()
    a.settimeout(2.0)
    b.settimeout(2.0)
    with a, b:
        yield Channel(a), b


def test_channel_round_trip_and_counters(pair: tuple[Channel, socket.socket]) -> None:
    chan, peer = pair
    peer_chan = Channel(peer)
    data = fr.encode_hello(Hello(9, 2, TICKET)) + fr.frame(T.NEED_END) + fr.encode_text(T.RESULT, "{}")
    peer_chan.send(data)
    kind, payload = chan.recv_frame()
    assert (kind, fr.decode_hello(payload)) == (T.HELLO, Hello(9, 2, TICKET))
    assert chan.recv_frame() == (T.NEED_END, b"")
    assert chan.recv_frame() == (T.RESULT, b"{}")
    assert peer_chan.sent == len(data)
    assert chan.received == len(data)


def test_channel_reassembles_dribbled_frame(pair: tuple[Channel, socket.socket]) -> None:
    chan, peer = pair
    entries = [e for e in ENTRIES if len(e.target) < 100]
    data = ec.encode_entries(entries)
    # A few dozen small sends fit the socket buffer, so no reader thread is needed.
    for i in range(0, len(data), 7):
        peer.sendall(data[i : i + 7])
    kind, payload = chan.recv_frame()
    assert kind is T.ENTRIES
    assert ec.decode_entries(payload) == entries


@pytest.mark.parametrize("kind", [0, 24, 255])
def test_channel_unknown_type(pair: tuple[Channel, socket.socket], kind: int) -> None:
    chan, peer = pair
    peer.sendall(HEAD.pack(kind, 0))
    with pytest.raises(ProtocolError, match=f"unknown frame type {kind}"):
        chan.recv_frame()


@pytest.mark.parametrize(("length", "limit"), [(MAX_FRAME + 1, MAX_FRAME), (0xFFFFFFFF, MAX_FRAME), (11, 10)])
def test_channel_over_limit_does_not_read_payload(pair: tuple[Channel, socket.socket], length: int,
                                                  limit: int) -> None:
    chan, peer = pair
    peer.sendall(HEAD.pack(T.RESULT, length) + b"PAYLOAD")
    with pytest.raises(ProtocolError, match=f"RESULT frame of {length} bytes exceeds the limit of {limit}"):
        chan.recv_frame(limit=limit)


def test_channel_at_limit_is_accepted(pair: tuple[Channel, socket.socket]) -> None:
    chan, peer = pair
    peer.sendall(fr.frame(T.RESULT, b"0123456789"))
    assert chan.recv_frame(limit=10) == (T.RESULT, b"0123456789")


@pytest.mark.parametrize(
    "data",
    [b"", bytes([T.RESULT, 0, 0]), HEAD.pack(T.RESULT, 10) + b"abc", HEAD.pack(T.RESULT, 1)],
    ids=["eof-at-boundary", "eof-in-header", "eof-in-payload", "eof-before-payload"],
)
def test_channel_eof_mid_frame(pair: tuple[Channel, socket.socket], data: bytes) -> None:
    chan, peer = pair
    peer.sendall(data)
    peer.shutdown(socket.SHUT_WR)
    with pytest.raises(ProtocolError, match="connection closed by the peer"):
        chan.recv_frame()


@pytest.mark.parametrize("block", [1 << 17, 1 << 20, 1 << 24])
def test_hint_round_trip(block: int) -> None:
    kind, payload = split(fr.encode_hint(7, block))
    assert kind is T.BASIS_HINT and fr.decode_hint(payload) == (7, block)


@pytest.mark.parametrize("payload", [b"", struct.pack("!II", 1, 1000), struct.pack("!II", 1, 1 << 25),
                                     struct.pack("!II", 1, 3 << 17), struct.pack("!III", 1, 1 << 17, 0)])
def test_hint_rejects(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        fr.decode_hint(payload)


def test_result_round_trips_and_cuts_a_long_error_at_a_character() -> None:
    r = fr.Result(files_done=3, bytes_done=2**64 - 1, files_skipped=1, deleted=2, renamed=4, errors=1,
                  first_error="hostB:/d/\u65e5: EACCES")
    assert fr.decode_result(fr.encode_result(r)[5:]) == r
    long = fr.Result(errors=1, first_error="x" + "\u65e5" * fr.MAX_RESULT_TEXT)
    back = fr.decode_result(fr.encode_result(long)[5:])
    assert long.first_error.startswith(back.first_error)
    assert fr.MAX_RESULT_TEXT - 3 < len(back.first_error.encode()) <= fr.MAX_RESULT_TEXT


@pytest.mark.parametrize(("payload", "why"), [
    (b"", "shorter than its 52-byte header"),
    (struct.pack("!6QI", 0, 0, 0, 0, 0, 0, 3) + b"ab", "header announces 55"),
    (struct.pack("!6QI", 0, 0, 0, 0, 0, 0, 0) + b"!", "header announces 52"),
    (struct.pack("!6QI", 0, 0, 0, 0, 0, 1, fr.MAX_RESULT_TEXT + 1), "error text, over"),
    (struct.pack("!6QI", 0, 0, 0, 0, 0, 1, 1) + b"\xff", "not UTF-8"),
])
def test_malformed_result_is_refused(payload: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        fr.decode_result(payload)
