"""Wire format of the data plane (protocol version 2).

Every control message is a frame: ``type:u8 length:u32be payload``. File bytes are NOT framed: a
FILE frame announces a byte range of one file and exactly that many raw bytes follow (sent with
``os.sendfile``), then a FILE_END frame says whether the source stayed unchanged while it was read.

One transfer uses one control connection and N data connections::

    control connection                        data connection k (k = 1..N)
    S: HELLO(job, attempt, ticket, N)         S: HELLO(job, attempt, data ticket k, role=data)
    R: ACCEPT(N data tickets) | REFUSE        R: ACCEPT | REFUSE
    S: ENTRIES(batch) ...  (diffed on arrival)S: FILE(index, offset, length, total, mtime, mode)
    R: NEED(indices) ...                         + raw bytes + FILE_END(status) ...
    S: MANIFEST_END(count)                    S: DATA_DONE
    R: NEED_END
    S: SENDER_DONE (after every data connection sent DATA_DONE)    FILE_SKIP(range) replaces FILE + bytes
                                                                   when the source changed since the scan
    R: RESULT(counts, first error)  (extras deleted, directory metadata set, durability applied)

A watch session (continuous replication) first sends rounds of CHANGES (renames, deletes) ... CHANGES_END on
the control connection, each answered by MISSED ... CHANGES_ACK, before its ENTRIES; its manifest then lists
only changed paths (see ``zcrepl.agent.transfer.changes``). FILE frames are accepted on the control
connection too. ABORT(reason) may come from either side at
any time; the connection is then closed. A compressed transfer sends ZFILE + ZDATA frames where FILE + raw bytes
would go (``compress.py``). An encrypted transfer runs each connection as a TLS 1.3 session first
(``tls.py``); the frames inside are the same. Data tickets are minted by the receiver for this session
only and are single-use, like the controller's ticket. Every length and count from the wire is
bounded before use (rsync CVE-2024-12084 and friends). The ENTRIES frame's codec is ``entrycodec.py``.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import NamedTuple

from zcrepl.core.errors import ProtocolError

MAGIC = b"ZCDP"
VERSION = 2
TICKET_LEN = 32
MAX_FRAME = 4 << 20
MAX_BATCH = 4096
MAX_TARGET = 4096
MAX_DIGEST = 64
MAX_STREAMS = 16
HEAD = struct.Struct("!BI")
_HELLO = struct.Struct(f"!4sHQI{TICKET_LEN}sBH")
_FILE = struct.Struct("!IQQQqI")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")


class T(enum.IntEnum):
    HELLO = 1
    ACCEPT = 2
    REFUSE = 3
    ENTRIES = 4
    MANIFEST_END = 5
    NEED = 6
    NEED_END = 7
    FILE = 8
    FILE_END = 9
    SENDER_DONE = 10
    RESULT = 11
    ABORT = 12
    DATA_DONE = 13
    # A range that will not come because the source file changed since the scan (no bytes follow).
    FILE_SKIP = 14
    # R->S: this needed file has a basis here (an older version, or a partial from an interrupted try).
    NEED_BASIS = 15
    # S->R: take this range from your basis (no bytes follow).
    REUSE = 16
    # S->R: the xxh3-128 of the whole new file; the assembled file is verified against it.
    DIGEST = 17
    # S->R: this range of a sparse file is a hole (no bytes follow; nothing is written there).
    HOLE = 18
    # R->S: a NEED_BASIS (delta, this block size) follows for this file once we hashed our version;
    # start hashing yours now, so both ends hash at the same time.
    BASIS_HINT = 19
    # S->R, before any ENTRIES of a watch session: renames and deletes to apply first, in order (the
    # manifest that follows then lists only changed paths and their parents, and nothing else is deleted).
    CHANGES = 20
    CHANGES_END = 21
    # R->S after CHANGES_END: rename sources the destination did not have (MISSED ...), then CHANGES_ACK.
    MISSED = 22
    CHANGES_ACK = 23
    # R->S after the NEEDs and bases of each ENTRIES batch: the first N entries are decided (u64 N). The sender
    # keeps only files it announced and not yet had decided or sent, and waits for these before it runs ahead.
    MANIFEST_ACK = 32
    # S->R, only when the controller ordered compression: a FILE header whose bytes follow as ZDATA frames
    # (zstd pieces, see compress.py) instead of raw; FILE_END closes it as usual.
    ZFILE = 40
    ZDATA = 41


class Kind(enum.IntEnum):
    FILE = 1
    DIR = 2
    SYMLINK = 3
    HARDLINK = 4  # another name of an earlier FILE entry of this manifest (``target`` is its path)



F_SPARSE = 1  # the file has holes: only its data segments travel
# The source may not read this file, directory or symlink: nothing of it travels (no content, no entries below
# a directory) and the receiver keeps whatever it has under that name, deleting nothing inside it.
F_UNREADABLE = 2
# A file with other names (nlink > 1), the first of them in this manifest: the only files a HARDLINK entry may
# name, so the receiver keeps the paths of these and of no other file.
F_LINKED = 4
MAX_XATTRS = 64 << 10

class BasisKind(enum.IntEnum):
    DELTA = 1  # block hashes of the destination's current version
    PARTIAL = 2  # intervals already written by an interrupted attempt, and their digest


MAX_BASIS = 200_000
_BASIS = struct.Struct("!IBII")
_IV = struct.Struct("!QQ")

class ConnRole(enum.IntEnum):
    """What a data-port connection is for, as its HELLO says."""

    CONTROL = 0  # the session: manifest, needs, bases, result
    DATA = 1  # file bytes of a session that already holds a control connection


class FileEnd(enum.IntEnum):
    """The one byte of a FILE_END: whether the range arrived as the source scanned it."""

    OK = 0
    CHANGED = 1  # the source file changed while it was read: the receiver discards the range


class Entry(NamedTuple):
    """One manifest entry. ``path`` is relative to the job root (``b""`` is the root itself).

    A NamedTuple, not a dataclass: hundreds of thousands are decoded per second and tuple creation is
    several times cheaper than a frozen dataclass's __init__.
    """

    kind: Kind
    path: bytes
    mode: int
    mtime_ns: int
    size: int = 0
    target: bytes = b""
    digest: bytes = b""
    uid: int = 0
    gid: int = 0
    flags: int = 0
    xattrs: bytes = b""  # encode_xattrs() of the entry's extended attributes (only with --xattrs)


def encode_xattrs(attrs: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(_U16.pack(len(k)) + _U32.pack(len(v)) + k + v for k, v in attrs)


def decode_xattrs(blob: bytes) -> list[tuple[bytes, bytes]]:
    out, off = [], 0
    while off < len(blob):
        if off + 6 > len(blob):
            raise ProtocolError("truncated extended attribute")
        (klen,) = _U16.unpack_from(blob, off)
        (vlen,) = _U32.unpack_from(blob, off + 2)
        off += 6
        key = blob[off : off + klen]
        # A NUL in the name would make os.setxattr raise ValueError (a crash, not a protocol error).
        if off + klen + vlen > len(blob) or not 0 < klen <= 255 or b"\0" in key:
            raise ProtocolError("malformed extended attribute")
        out.append((key, blob[off + klen : off + klen + vlen]))
        off += klen + vlen
    return out


@dataclass(frozen=True, slots=True)
class Hello:
    job_id: int
    attempt: int
    ticket: bytes
    role: ConnRole = ConnRole.CONTROL
    streams: int = 1  # data connections the sender would like (control role only)


@dataclass(slots=True)
class FileHead:
    """``length`` bytes at ``offset`` of file ``index`` whose whole size is ``total``."""

    index: int
    offset: int
    length: int
    total: int
    mtime_ns: int
    mode: int


def frame(kind: T, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_FRAME:
        raise ValueError(f"frame of {len(payload)} bytes exceeds {MAX_FRAME}")
    return HEAD.pack(kind, len(payload)) + payload


def encode_hello(h: Hello) -> bytes:
    return frame(T.HELLO, _HELLO.pack(MAGIC, VERSION, h.job_id, h.attempt, h.ticket, h.role, h.streams))


def decode_hello(payload: bytes) -> Hello:
    if len(payload) < 6 or payload[:4] != MAGIC:
        raise ProtocolError("not a zcrepl data connection (bad magic)")
    (version,) = _U16.unpack_from(payload, 4)
    if version != VERSION:
        raise ProtocolError(f"data protocol version {version}, this agent speaks {VERSION}; upgrade the older agent")
    if len(payload) != _HELLO.size:
        raise ProtocolError(f"HELLO of {len(payload)} bytes, expected {_HELLO.size}")
    _, _, job_id, attempt, ticket, role, streams = _HELLO.unpack(payload)
    try:
        return Hello(job_id, attempt, ticket, ConnRole(role), streams)
    except ValueError:
        raise ProtocolError(f"HELLO with unknown role {role}") from None


def encode_accept(tickets: list[bytes]) -> bytes:
    return frame(T.ACCEPT, _U16.pack(len(tickets)) + b"".join(tickets))


def decode_accept(payload: bytes) -> list[bytes]:
    if len(payload) < 2:
        raise ProtocolError("ACCEPT frame too short")
    (n,) = _U16.unpack_from(payload, 0)
    if n > MAX_STREAMS or len(payload) != 2 + n * TICKET_LEN:
        raise ProtocolError("ACCEPT frame length disagrees with its ticket count")
    return [payload[2 + i * TICKET_LEN : 2 + (i + 1) * TICKET_LEN] for i in range(n)]


def encode_u64(kind: T, value: int) -> bytes:
    return frame(kind, _U64.pack(value))


def decode_u64(payload: bytes, what: str) -> int:
    if len(payload) != 8:
        raise ProtocolError(f"{what} frame of {len(payload)} bytes, expected 8")
    return int(_U64.unpack(payload)[0])


def encode_need(indices: list[int]) -> bytes:
    return frame(T.NEED, _U32.pack(len(indices)) + struct.pack(f"!{len(indices)}I", *indices))


def decode_need(payload: bytes) -> list[int]:
    if len(payload) < 4:
        raise ProtocolError("NEED frame too short")
    (count,) = _U32.unpack_from(payload, 0)
    if len(payload) != 4 + 4 * count:
        raise ProtocolError("NEED frame length disagrees with its count")
    return list(struct.unpack_from(f"!{count}I", payload, 4))


def encode_file(h: FileHead, kind: T = T.FILE) -> bytes:
    return frame(kind, _FILE.pack(h.index, h.offset, h.length, h.total, h.mtime_ns, h.mode))


_FILE_FRAME = struct.Struct("!BI" + _FILE.format[1:])


def file_head(kind: T, index: int, offset: int, length: int, total: int, mtime_ns: int, mode: int) -> bytes:
    """``encode_file`` without the FileHead: the same bytes in one pack (a sender of many small files makes
    one of these per file)."""
    return _FILE_FRAME.pack(kind, _FILE.size, index, offset, length, total, mtime_ns, mode)


def decode_file(payload: bytes) -> FileHead:
    if len(payload) != _FILE.size:
        raise ProtocolError(f"FILE frame of {len(payload)} bytes, expected {_FILE.size}")
    h = FileHead(*_FILE.unpack(payload))
    if h.total > (1 << 60) or h.offset + h.length > h.total:
        raise ProtocolError(f"FILE range {h.offset}+{h.length} lies outside the file's {h.total} bytes")
    return h


@dataclass(frozen=True, slots=True)
class Basis:
    index: int
    kind: BasisKind
    block: int = 0
    hashes: tuple[bytes, ...] = ()  # DELTA: one xxh3-128 per block
    intervals: tuple[tuple[int, int], ...] = ()  # PARTIAL
    digest: bytes = b""  # PARTIAL: xxh3-128 of the intervals' bytes in order


def encode_basis(b: Basis) -> bytes:
    if b.kind == BasisKind.DELTA:
        body = b"".join(b.hashes)
        count = len(b.hashes)
    else:
        body = b"".join(_IV.pack(o, n) for o, n in b.intervals) + b.digest
        count = len(b.intervals)
    return frame(T.NEED_BASIS, _BASIS.pack(b.index, b.kind, b.block, count) + body)


def decode_basis(payload: bytes) -> Basis:
    if len(payload) < _BASIS.size:
        raise ProtocolError("NEED_BASIS frame too short")
    index, kind, block, count = _BASIS.unpack_from(payload, 0)
    body = payload[_BASIS.size :]
    if count > MAX_BASIS:
        raise ProtocolError(f"NEED_BASIS with {count} items exceeds {MAX_BASIS}")
    if kind == BasisKind.DELTA:
        if len(body) != 16 * count or not (1 << 17) <= block <= (1 << 24) or block & (block - 1):
            raise ProtocolError("NEED_BASIS delta frame with a bad length or block size")
        return Basis(index, BasisKind.DELTA, block, tuple(body[i * 16 : (i + 1) * 16] for i in range(count)))
    if kind == BasisKind.PARTIAL:
        if len(body) != _IV.size * count + 16 or block:
            raise ProtocolError("NEED_BASIS partial frame with a block size, or a length that disagrees with its count")
        ivs = tuple(_IV.unpack_from(body, i * _IV.size) for i in range(count))
        return Basis(index, BasisKind.PARTIAL, 0, intervals=ivs, digest=body[-16:])
    raise ProtocolError(f"NEED_BASIS of unknown kind {kind}")


_HINT = struct.Struct("!II")


def encode_hint(index: int, block: int) -> bytes:
    return frame(T.BASIS_HINT, _HINT.pack(index, block))


def decode_hint(payload: bytes) -> tuple[int, int]:
    if len(payload) != _HINT.size:
        raise ProtocolError(f"BASIS_HINT frame of {len(payload)} bytes, expected {_HINT.size}")
    index, block = _HINT.unpack(payload)
    if not (1 << 17) <= block <= (1 << 24) or block & (block - 1):
        raise ProtocolError("BASIS_HINT with a bad block size")
    return index, block


def encode_digest(index: int, digest: bytes) -> bytes:
    return frame(T.DIGEST, _U32.pack(index) + digest)


def decode_digest(payload: bytes) -> tuple[int, bytes]:
    if len(payload) != 20:
        raise ProtocolError(f"DIGEST frame of {len(payload)} bytes, expected 20")
    return _U32.unpack_from(payload, 0)[0], payload[4:]


FILE_END_OK = frame(T.FILE_END, bytes([FileEnd.OK]))
FILE_END_CHANGED = frame(T.FILE_END, bytes([FileEnd.CHANGED]))


def encode_text(kind: T, text: str) -> bytes:
    return frame(kind, text.encode("utf-8", "backslashreplace")[:65536])


def decode_text(payload: bytes) -> str:
    return payload[:65536].decode("utf-8", "replace")


RESULT_COUNTS = ("files_done", "bytes_done", "files_skipped", "deleted", "renamed", "errors")
MAX_RESULT_TEXT = 65536
_RESULT = struct.Struct("!6QI")  # the six counts, then the length of first_error's UTF-8 bytes that follow


@dataclass(frozen=True)
class Result:
    """The destination's account of an attempt: what it applied, and the first entry it could not."""

    files_done: int = 0
    bytes_done: int = 0
    files_skipped: int = 0
    deleted: int = 0
    renamed: int = 0
    errors: int = 0
    first_error: str = ""


def encode_result(r: Result) -> bytes:
    # Cut at a character boundary, so the decoder's strict UTF-8 check holds for any text we send.
    text = r.first_error.encode("utf-8", "backslashreplace")[:MAX_RESULT_TEXT].decode("utf-8", "ignore").encode()
    return frame(T.RESULT, _RESULT.pack(*(getattr(r, k) for k in RESULT_COUNTS), len(text)) + text)


def decode_result(payload: bytes) -> Result:
    if len(payload) < _RESULT.size:
        raise ProtocolError(f"RESULT frame of {len(payload)} bytes, shorter than its {_RESULT.size}-byte header")
    files, nbytes, skipped, deleted, renamed, errors, n = _RESULT.unpack_from(payload, 0)
    if n > MAX_RESULT_TEXT:
        raise ProtocolError(f"RESULT frame with a {n}-byte error text, over {MAX_RESULT_TEXT}")
    if len(payload) != _RESULT.size + n:
        raise ProtocolError(f"RESULT frame of {len(payload)} bytes, but its header announces {_RESULT.size + n}")
    try:
        text = payload[_RESULT.size :].decode("utf-8")
    except UnicodeDecodeError as err:
        raise ProtocolError(f"RESULT frame with an error text that is not UTF-8: {err}") from err
    return Result(files, nbytes, skipped, deleted, renamed, errors, text)
