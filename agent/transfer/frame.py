"""Wire format of the data plane (protocol version 1).

Every control message is a frame: ``type:u8 length:u32be payload``. File bytes are NOT framed: a
FILE frame announces ``size`` and exactly that many raw bytes follow (sent with ``os.sendfile``),
then a FILE_END frame says whether the source stayed unchanged while it was read.

::

    sender                                   receiver
    HELLO(job, attempt, ticket)       --->
                                      <---   ACCEPT | REFUSE(reason)
    ENTRIES(batch) ...                --->   (diffs each batch on arrival)
                                      <---   NEED(indices) ...
    MANIFEST_END(count)               --->
                                      <---   NEED_END
    FILE(index, size, mtime, mode) + raw bytes + FILE_END(status) ...
    SENDER_DONE                       --->   (deletes extras, sets directory metadata, syncs)
                                      <---   RESULT(json stats)
    ABORT(reason) may come from either side at any time; the connection is then closed.

Every length and count from the wire is bounded before use (rsync CVE-2024-12084 and friends).
"""

from __future__ import annotations

import enum
import socket
import struct
from dataclasses import dataclass

from zcrepl.core.errors import ProtocolError

MAGIC = b"ZCDP"
VERSION = 1
TICKET_LEN = 32
MAX_FRAME = 4 << 20
MAX_BATCH = 4096
MAX_TARGET = 4096
MAX_DIGEST = 64
_HEAD = struct.Struct("!BI")
_HELLO = struct.Struct(f"!4sHQI{TICKET_LEN}s")
_ENTRY = struct.Struct("!BIqQHHB")
_FILE = struct.Struct("!IQqI")
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


class Kind(enum.IntEnum):
    FILE = 1
    DIR = 2
    SYMLINK = 3


FILE_OK = 0
FILE_CHANGED = 1


@dataclass(frozen=True, slots=True)
class Entry:
    """One manifest entry. ``path`` is relative to the job root (``b""`` is the root itself)."""

    kind: Kind
    path: bytes
    mode: int
    mtime_ns: int
    size: int = 0
    target: bytes = b""
    digest: bytes = b""


@dataclass(frozen=True, slots=True)
class Hello:
    job_id: int
    attempt: int
    ticket: bytes


@dataclass(frozen=True, slots=True)
class FileHead:
    index: int
    size: int
    mtime_ns: int
    mode: int


def frame(kind: T, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_FRAME:
        raise ValueError(f"frame of {len(payload)} bytes exceeds {MAX_FRAME}")
    return _HEAD.pack(kind, len(payload)) + payload


def encode_hello(h: Hello) -> bytes:
    return frame(T.HELLO, _HELLO.pack(MAGIC, VERSION, h.job_id, h.attempt, h.ticket))


def decode_hello(payload: bytes) -> Hello:
    if len(payload) != _HELLO.size:
        raise ProtocolError(f"HELLO of {len(payload)} bytes, expected {_HELLO.size}")
    magic, version, job_id, attempt, ticket = _HELLO.unpack(payload)
    if magic != MAGIC:
        raise ProtocolError("not a zcrepl data connection (bad magic)")
    if version != VERSION:
        raise ProtocolError(f"data protocol version {version}, this agent speaks {VERSION}; upgrade the older agent")
    return Hello(job_id, attempt, ticket)


def encode_entries(entries: list[Entry]) -> bytes:
    parts = [_U32.pack(len(entries))]
    for e in entries:
        parts.append(_ENTRY.pack(e.kind, e.mode, e.mtime_ns, e.size, len(e.path), len(e.target), len(e.digest)))
        parts.append(e.path)
        parts.append(e.target)
        parts.append(e.digest)
    return frame(T.ENTRIES, b"".join(parts))


def decode_entries(payload: bytes) -> list[Entry]:
    """Decode a batch; structural checks only (names are validated by the receiver)."""
    mv = memoryview(payload)
    if len(mv) < 4:
        raise ProtocolError("ENTRIES frame too short")
    (count,) = _U32.unpack_from(mv, 0)
    if count > MAX_BATCH:
        raise ProtocolError(f"ENTRIES batch of {count} entries exceeds {MAX_BATCH}")
    off = 4
    out: list[Entry] = []
    for _ in range(count):
        if off + _ENTRY.size > len(mv):
            raise ProtocolError("ENTRIES frame truncated in an entry header")
        kind, mode, mtime_ns, size, plen, tlen, dlen = _ENTRY.unpack_from(mv, off)
        off += _ENTRY.size
        if tlen > MAX_TARGET or dlen > MAX_DIGEST:
            raise ProtocolError("ENTRIES entry with an oversized symlink target or digest")
        end = off + plen + tlen + dlen
        if end > len(mv):
            raise ProtocolError("ENTRIES frame truncated in an entry body")
        path = bytes(mv[off : off + plen])
        target = bytes(mv[off + plen : off + plen + tlen])
        digest = bytes(mv[off + plen + tlen : end])
        off = end
        try:
            k = Kind(kind)
        except ValueError as err:
            raise ProtocolError(f"ENTRIES entry of unknown kind {kind}") from err
        if mtime_ns < -(1 << 62) or size > (1 << 60):
            raise ProtocolError("ENTRIES entry with an out-of-range mtime or size")
        if k is not Kind.FILE and size:
            raise ProtocolError("ENTRIES non-file entry with a size")
        if k is not Kind.SYMLINK and target:
            raise ProtocolError("ENTRIES non-symlink entry with a target")
        out.append(Entry(k, path, mode, mtime_ns, size, target, digest))
    if off != len(mv):
        raise ProtocolError("ENTRIES frame has trailing bytes")
    return out


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


def encode_file(h: FileHead) -> bytes:
    return frame(T.FILE, _FILE.pack(h.index, h.size, h.mtime_ns, h.mode))


def decode_file(payload: bytes) -> FileHead:
    if len(payload) != _FILE.size:
        raise ProtocolError(f"FILE frame of {len(payload)} bytes, expected {_FILE.size}")
    return FileHead(*_FILE.unpack(payload))


def encode_text(kind: T, text: str) -> bytes:
    return frame(kind, text.encode("utf-8", "backslashreplace")[:65536])


def decode_text(payload: bytes) -> str:
    return payload[:65536].decode("utf-8", "replace")


class Channel:
    """Blocking frame I/O over one socket, counting bytes both ways.

    Reads go through ``recv_into`` on a reused buffer; a peer that stalls hits the socket timeout.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sent = 0
        self.received = 0
        self._head = bytearray(_HEAD.size)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)
        self.sent += len(data)

    def recv_exact(self, buf: bytearray | memoryview, n: int) -> None:
        mv = memoryview(buf)[:n]
        got = 0
        while got < n:
            k = self.sock.recv_into(mv[got:], n - got)
            if k == 0:
                raise ProtocolError(f"connection closed by the peer after {got} of {n} bytes of a frame")
            got += k
        self.received += n

    def recv_frame(self, limit: int = MAX_FRAME) -> tuple[T, bytes]:
        """Next frame; EOF at a frame boundary raises ProtocolError too (callers expect a reply)."""
        self.recv_exact(self._head, _HEAD.size)
        kind, length = _HEAD.unpack(self._head)
        try:
            t = T(kind)
        except ValueError as err:
            raise ProtocolError(f"unknown frame type {kind}") from err
        if length > limit:
            raise ProtocolError(f"{t.name} frame of {length} bytes exceeds the limit of {limit}")
        payload = bytearray(length)
        if length:
            self.recv_exact(payload, length)
        return t, bytes(payload)
