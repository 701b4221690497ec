"""Property-based fuzzing of every data-plane decoder and of Channel's frame reading.

The rule (DESIGN §3 rule 4): any byte string either decodes into a valid value or raises ProtocolError,
never another exception, and never costs memory out of proportion to its length. A value that decodes
is canonical: encoding it again gives back the very bytes it came from. Every encoder/decoder pair
round-trips.
"""

from __future__ import annotations

import socket
import struct
import threading
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from zcfuzz import U16, U32, U64, budget, extremes, mutated

from zcrepl.agent.transfer import entrycodec as ec
from zcrepl.agent.transfer import frame as fr
from zcrepl.agent.transfer import opsframe as opf
from zcrepl.agent.transfer.channel import Channel
from zcrepl.agent.transfer.frame import Basis, Entry, FileHead, Hello, Kind, T
from zcrepl.core.errors import ProtocolError

HEAD = struct.Struct("!BI")
BLOCKS = st.sampled_from([1 << k for k in range(17, 25)])
DIGEST16 = st.binary(min_size=16, max_size=16)


def payload_of(encoded: bytes) -> bytes:
    """Strip a frame header (checking it) from what an encoder returned."""
    kind, length = HEAD.unpack_from(encoded)
    T(kind)
    assert length == len(encoded) - HEAD.size
    return encoded[HEAD.size :]


# -- valid values, one strategy per message ---------------------------------------------------------

hellos = st.builds(Hello, U64, U32, st.binary(min_size=fr.TICKET_LEN, max_size=fr.TICKET_LEN),
                   st.sampled_from([fr.ConnRole.CONTROL, fr.ConnRole.DATA]), U16)
accepts = st.lists(st.binary(min_size=fr.TICKET_LEN, max_size=fr.TICKET_LEN), max_size=fr.MAX_STREAMS)
xattr_pairs = st.lists(st.tuples(st.binary(min_size=1, max_size=255).filter(lambda k: b"\0" not in k),
                                 st.binary(max_size=64)), max_size=4)


LONG_TARGET = b"t" * (fr.MAX_TARGET + 1)  # too long for a symlink, fine for a hard link (a manifest path)


@st.composite
def entries(draw: st.DrawFn) -> Entry:
    kind = draw(st.sampled_from(Kind))
    is_file = kind is Kind.FILE
    target = b""
    if kind in (Kind.SYMLINK, Kind.HARDLINK):
        target = draw(st.binary(max_size=64) | st.just(LONG_TARGET if kind is Kind.HARDLINK else b"s"))
    flags = 0
    if kind is not Kind.HARDLINK:
        flags = draw(st.sampled_from([0, fr.F_UNREADABLE] + ([fr.F_SPARSE, fr.F_SPARSE | fr.F_UNREADABLE]
                                                              if is_file else [])))
    return Entry(kind, draw(st.binary(max_size=64)), draw(U32), draw(st.integers(-(1 << 62), 2**63 - 1)),
                 draw(st.integers(0, 1 << 60)) if is_file else 0, target, draw(st.binary(max_size=fr.MAX_DIGEST)),
                 draw(U32), draw(U32), flags, fr.encode_xattrs(draw(xattr_pairs)))


@st.composite
def file_heads(draw: st.DrawFn) -> FileHead:
    total = draw(st.integers(0, 1 << 60))
    offset = draw(st.integers(0, total))
    return FileHead(draw(U32), offset, draw(st.integers(0, total - offset)), total,
                    draw(st.integers(-(2**63), 2**63 - 1)), draw(U32))


bases = st.one_of(
    st.builds(lambda i, b, h: Basis(i, fr.BasisKind.DELTA, b, tuple(h)), U32, BLOCKS, st.lists(DIGEST16, max_size=8)),
    st.builds(lambda i, iv, d: Basis(i, fr.BasisKind.PARTIAL, intervals=tuple(iv), digest=d), U32,
              st.lists(st.tuples(U64, U64), max_size=8), DIGEST16),
)


@st.composite
def ops_lists(draw: st.DrawFn, kinds: tuple[int, ...]) -> list[opf.Op]:
    out = []
    for kind in draw(st.lists(st.sampled_from(kinds), max_size=8)):
        path = draw(st.binary(max_size=64))
        out.append(opf.Op(kind, path, draw(st.binary(max_size=64)) if kind == opf.OP_RENAME else b""))
    return out


# -- the table: decoder, encoder, valid values, and what a decoded value must satisfy ----------------


@dataclass(frozen=True)
class Codec:
    decode: Callable[[bytes], Any]
    encode: Callable[[Any], bytes]  # the whole frame, or the bare blob when ``framed`` is False
    values: st.SearchStrategy[Any]
    valid: Callable[[Any], bool]
    framed: bool = True
    encodable: st.SearchStrategy[Any] | None = None  # values that encode but need not be valid (default: values)
    canonical: bool = True  # a decoded value encodes back to the very same bytes


def _entry_ok(e: Entry) -> bool:
    flags = {Kind.FILE: fr.F_SPARSE | fr.F_UNREADABLE | fr.F_LINKED, Kind.HARDLINK: 0}.get(e.kind, fr.F_UNREADABLE)
    return ((len(e.target) <= fr.MAX_TARGET or e.kind is Kind.HARDLINK) and len(e.digest) <= fr.MAX_DIGEST
            and len(e.xattrs) <= fr.MAX_XATTRS and 0 <= e.size <= 1 << 60 and e.mtime_ns >= -(1 << 62)
            and not e.flags & ~flags and (e.kind is Kind.FILE or not e.size)
            and (e.kind in (Kind.SYMLINK, Kind.HARDLINK) or not e.target))


def _basis_ok(b: Basis) -> bool:
    if b.kind == fr.BasisKind.DELTA:
        return (1 << 17) <= b.block <= (1 << 24) and not b.block & (b.block - 1) and all(len(h) == 16 for h in b.hashes)
    return b.kind == fr.BasisKind.PARTIAL and len(b.digest) == 16 and len(b.intervals) <= fr.MAX_BASIS


def _ops_ok(kinds: tuple[int, ...]) -> Callable[[list[opf.Op]], bool]:
    return lambda ops: len(ops) <= opf.MAX_OPS and all(
        op.kind in kinds and len(op.path) <= fr.MAX_TARGET and len(op.target) <= fr.MAX_TARGET
        and (op.kind == opf.OP_RENAME or not op.target) for op in ops)


def _result_ok(r: fr.Result) -> bool:
    counts = [getattr(r, k) for k in fr.RESULT_COUNTS]
    return all(0 <= c < 2**64 for c in counts) and len(r.first_error.encode()) <= fr.MAX_RESULT_TEXT


results = st.builds(fr.Result, *[U64] * len(fr.RESULT_COUNTS), first_error=st.text(max_size=40))
_CHANGES = (opf.OP_RENAME, opf.OP_DELETE)
_MISSED = (opf.OP_MISSED,)
CODECS: dict[str, Codec] = {
    "hello": Codec(fr.decode_hello, fr.encode_hello, hellos,
                   lambda h: h.role in (fr.ConnRole.CONTROL, fr.ConnRole.DATA) and len(h.ticket) == fr.TICKET_LEN),
    "accept": Codec(fr.decode_accept, fr.encode_accept, accepts,
                    lambda ts: len(ts) <= fr.MAX_STREAMS and all(len(t) == fr.TICKET_LEN for t in ts)),
    "entries": Codec(ec.decode_entries, ec.encode_entries, st.lists(entries(), max_size=6),
                     lambda es: len(es) <= fr.MAX_BATCH and all(map(_entry_ok, es))),
    "u64": Codec(lambda p: fr.decode_u64(p, "MANIFEST_END"), lambda v: fr.encode_u64(T.MANIFEST_END, v), U64,
                 lambda v: 0 <= v < 2**64),
    "result": Codec(fr.decode_result, fr.encode_result, results, _result_ok),
    "need": Codec(fr.decode_need, fr.encode_need, st.lists(U32, max_size=32),
                  lambda ns: all(0 <= n < 2**32 for n in ns)),
    "file": Codec(fr.decode_file, fr.encode_file, file_heads(),
                  lambda h: h.offset >= 0 and h.length >= 0 and h.offset + h.length <= h.total <= 1 << 60),
    "basis": Codec(fr.decode_basis, fr.encode_basis, bases, _basis_ok),
    "hint": Codec(lambda p: fr.decode_hint(p), lambda v: fr.encode_hint(*v), st.tuples(U32, BLOCKS),
                  lambda v: (1 << 17) <= v[1] <= (1 << 24) and not v[1] & (v[1] - 1)),
    "digest": Codec(fr.decode_digest, lambda v: fr.encode_digest(*v), st.tuples(U32, DIGEST16),
                    lambda v: len(v[1]) == 16),
    "xattrs": Codec(fr.decode_xattrs, fr.encode_xattrs, xattr_pairs,
                    lambda kv: all(0 < len(k) <= 255 and b"\0" not in k for k, _ in kv), framed=False,
                    encodable=st.lists(st.tuples(st.binary(max_size=300), st.binary(max_size=64)), max_size=4)),
    "changes": Codec(lambda p: opf.decode_ops(p, _CHANGES), lambda ops: opf.encode_ops(T.CHANGES, ops),
                     ops_lists(_CHANGES), _ops_ok(_CHANGES)),
    "missed": Codec(lambda p: opf.decode_ops(p, _MISSED), lambda ops: opf.encode_ops(T.MISSED, ops),
                    ops_lists(_MISSED), _ops_ok(_MISSED)),
}


def encoded(codec: Codec, values: st.SearchStrategy[Any] | None = None) -> st.SearchStrategy[bytes]:
    """Payloads of valid values (what a well-behaved peer sends), or of ``values``."""
    source = codec.values if values is None else values
    return source.map(lambda v: payload_of(codec.encode(v)) if codec.framed else codec.encode(v))


def hostile(codec: Codec) -> st.SearchStrategy[bytes]:
    """Raw bytes, encodings of values that may be invalid, and valid payloads with a few edits."""
    return st.one_of(st.binary(max_size=96), encoded(codec, codec.encodable), mutated(encoded(codec)),
                     mutated(encoded(codec), max_edits=8))


def decode_bounded(codec: Codec, payload: bytes) -> Any:
    """Decode under tracemalloc: whatever it returns or raises, it may not allocate out of proportion to
    the payload (a count field must never be trusted before the bytes behind it are there)."""
    tracemalloc.start()
    try:
        return codec.decode(payload)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak <= 64 * len(payload) + (64 << 10), f"{peak} bytes allocated to decode {len(payload)}"


def _check_decoded(codec: Codec, payload: bytes) -> None:
    try:
        value = decode_bounded(codec, payload)
    except ProtocolError as err:
        assert str(err)  # one sentence for the log and the job's error
        return
    assert codec.valid(value), value
    if codec.canonical:
        again = codec.encode(value)
        assert (payload_of(again) if codec.framed else again) == payload, "decoding is not canonical"


# -- properties -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CODECS))
@given(data=st.data())
@budget(150)
def test_any_payload_decodes_canonically_or_is_a_protocol_error(name: str, data: st.DataObject) -> None:
    codec = CODECS[name]
    _check_decoded(codec, data.draw(hostile(codec), label="payload"))


@pytest.mark.parametrize("name", sorted(CODECS))
@given(data=st.data())
@budget(60)
def test_round_trip(name: str, data: st.DataObject) -> None:
    codec = CODECS[name]
    value = data.draw(codec.values, label="value")
    blob = codec.encode(value)
    assert codec.decode(payload_of(blob) if codec.framed else blob) == value


@given(text=st.text(max_size=200))
@budget(100)
def test_text_round_trips_and_any_bytes_decode(text: str) -> None:
    for kind in (T.REFUSE, T.ABORT, T.RESULT):
        assert fr.decode_text(payload_of(fr.encode_text(kind, text))) == text.encode(
            "utf-8", "backslashreplace").decode("utf-8")


@given(payload=st.binary(max_size=300) | mutated(st.text(max_size=100).map(lambda s: s.encode())))
@budget(100)
def test_decode_text_accepts_any_bytes(payload: bytes) -> None:
    assert isinstance(fr.decode_text(payload), str)


@given(unit=st.text(min_size=1, max_size=6, alphabet=st.sampled_from("a\u00e9\u65e5\U0001f600")),
       chars=st.integers(16000, 70000))
@budget(10)
def test_text_is_cut_to_64k_and_still_decodes(unit: str, chars: int) -> None:
    text = (unit * (chars // len(unit) + 1))[:chars]
    payload = payload_of(fr.encode_text(T.ABORT, text))
    assert len(payload) <= 65536
    assert text.startswith(fr.decode_text(payload).rstrip("\ufffd"))


@given(ops=ops_lists(_CHANGES), big=st.integers(0, 3))
@budget(60)
def test_op_batches_split_and_decode_back(ops: list[opf.Op], big: int) -> None:
    many = ops + [opf.Op(opf.OP_DELETE, b"p%d" % i) for i in range(big * 3000)]
    frames = opf.op_batches(many, T.CHANGES)
    back = [op for f in frames for op in opf.decode_ops(payload_of(f), _CHANGES)]
    assert back == many
    assert all(len(f) - HEAD.size <= fr.MAX_FRAME for f in frames)


# -- Channel ----------------------------------------------------------------------------------------


def model_frames(stream: bytes, limit: int) -> tuple[list[tuple[int, bytes]], str]:
    """What recv_frame must return on ``stream`` followed by EOF: the frames, then why it stops."""
    out: list[tuple[int, bytes]] = []
    off = 0
    while True:
        if len(stream) - off < HEAD.size:
            return out, "eof"
        kind, length = HEAD.unpack_from(stream, off)
        if kind not in T._value2member_map_:
            return out, "unknown"
        if length > limit:
            return out, "limit"
        if len(stream) - off - HEAD.size < length:
            return out, "eof"
        out.append((kind, stream[off + HEAD.size : off + HEAD.size + length]))
        off += HEAD.size + length


frame_kinds = st.one_of(st.sampled_from(T), st.integers(0, 255))


@st.composite
def raw_frames(draw: st.DrawFn, max_payload: int = 64) -> bytes:
    kind = draw(frame_kinds)
    payload = draw(st.binary(max_size=max_payload))
    length = draw(st.one_of(st.just(len(payload)), extremes(4)))
    return HEAD.pack(int(kind), length) + payload


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    """Concatenated frames (valid ones mostly, some with lying lengths), maybe cut short or edited."""
    parts = draw(st.lists(st.one_of(
        st.builds(lambda k, p: fr.frame(k, p), st.sampled_from(T), st.binary(max_size=80)),
        raw_frames()), max_size=8))
    return draw(st.one_of(st.just(b"".join(parts)), mutated(st.just(b"".join(parts))), st.binary(max_size=64)))


def read_all(stream: bytes, limit: int, bufsize: int, chunk: int) -> tuple[list[tuple[int, bytes]], BaseException]:
    """Feed ``stream`` (``chunk`` bytes at a time, then EOF) to a Channel over a socketpair and read
    frames until it raises. A receiver that hangs times out (an OSError, which fails the test)."""
    a, b = socket.socketpair()
    a.settimeout(20)
    got: list[tuple[int, bytes]] = []

    def feed() -> None:
        try:
            for i in range(0, len(stream), chunk):
                b.sendall(stream[i : i + chunk])
            b.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the reader gave up first

    writer = threading.Thread(target=feed, name="fuzz-feed")
    writer.start()
    try:
        ch = Channel(a, bufsize=bufsize)
        while True:
            try:
                kind, payload = ch.recv_frame(limit)
            except BaseException as err:  # checked by the caller
                return got, err
            got.append((int(kind), payload))
    finally:
        a.shutdown(socket.SHUT_RDWR)
        writer.join(20)
        assert not writer.is_alive()
        a.close()
        b.close()


@given(stream=streams(), limit=st.sampled_from([16, 256, fr.MAX_FRAME]), bufsize=st.sampled_from([8, 64, 256 << 10]),
       chunk=st.sampled_from([1, 3, 7, 4096]))
@example(stream=fr.frame(T.RESULT, b"x" * 100), limit=fr.MAX_FRAME, bufsize=8, chunk=1)
@example(stream=HEAD.pack(T.RESULT, 0xFFFF_FFFF) + b"x", limit=fr.MAX_FRAME, bufsize=64, chunk=4096)
@example(stream=HEAD.pack(T.RESULT, 100) + b"x" * 50, limit=fr.MAX_FRAME, bufsize=8, chunk=3)
@budget(150)
def test_channel_reads_exactly_the_frames_then_a_protocol_error(stream: bytes, limit: int, bufsize: int,
                                                               chunk: int) -> None:
    expected, why = model_frames(stream, limit)
    got, err = read_all(stream, limit, bufsize, chunk)
    assert isinstance(err, ProtocolError), repr(err)
    assert got == expected
    words = {"eof": "closed", "unknown": "unknown frame type", "limit": "exceeds the limit"}
    assert words[why] in str(err)


@given(length=st.integers(fr.MAX_FRAME + 1, 2**32 - 1) | st.sampled_from([2**32 - 1, fr.MAX_FRAME + 1]),
       kind=st.sampled_from(T))
@budget(30)
def test_an_oversized_length_is_refused_before_any_allocation(length: int, kind: T) -> None:
    a, b = socket.socketpair()
    try:
        b.sendall(HEAD.pack(kind, length) + b"\0" * 64)
        a.settimeout(20)
        ch = Channel(a, bufsize=4096)
        tracemalloc.start()
        try:
            with pytest.raises(ProtocolError, match="exceeds the limit"):
                ch.recv_frame()
        finally:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        assert peak < 64 << 10
        assert ch.received <= HEAD.size + 64
    finally:
        a.close()
        b.close()


# -- the same at full size (slow: campaign only) ----------------------------------------------------


@pytest.mark.slow
@given(data=st.data())
@budget(4)
def test_full_batches_decode_canonically_or_are_protocol_errors(data: st.DataObject) -> None:
    """Batches of MAX_BATCH entries and frames near MAX_FRAME, edited in a few places."""
    base = ec.encode_entries([Entry(Kind.FILE, b"f%05d" % i, 0o644, i, i, b"", b"d" * 16, 0, 0, 0,
                                    fr.encode_xattrs([(b"user.k", b"v" * 900)])) for i in range(fr.MAX_BATCH)])
    assert len(base) - HEAD.size <= fr.MAX_FRAME
    payload = data.draw(mutated(st.just(payload_of(base)), max_edits=4))
    _check_decoded(CODECS["entries"], payload)


@pytest.mark.slow
@given(size=st.integers(256 << 10, fr.MAX_FRAME), cut=st.integers(0, 64), bufsize=st.sampled_from([4096, 256 << 10]))
@budget(3)
def test_frames_near_the_limit_through_a_channel(size: int, cut: int, bufsize: int) -> None:
    stream = fr.frame(T.ENTRIES, b"e" * size) + fr.frame(T.NEED_END)
    stream = stream[: len(stream) - cut]
    got, err = read_all(stream, fr.MAX_FRAME, bufsize, 1 << 16)
    assert isinstance(err, ProtocolError)
    assert got == model_frames(stream, fr.MAX_FRAME)[0]

