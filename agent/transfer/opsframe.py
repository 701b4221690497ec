"""Wire format of a watch session's change lists (CHANGES and MISSED frames; see ``frame`` for the framing).

A list is ``count:u32`` items of ``kind:u8 len:u16 path`` (a rename adds ``len:u16 target``). Names are
bounded here and validated by the receiver, never normalised.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from zcrepl.agent.transfer.frame import MAX_TARGET, T, frame
from zcrepl.core.errors import ProtocolError

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")

OP_RENAME = 1
OP_DELETE = 2
OP_MISSED = 3
_OP = struct.Struct("!BH")
MAX_OPS = 8192


class Op(NamedTuple):
    kind: int
    path: bytes
    target: bytes = b""  # the new name (OP_RENAME only)


def encode_ops(kind: T, ops: list[Op]) -> bytes:
    parts = [_U32.pack(len(ops))]
    for op in ops:
        parts.append(_OP.pack(op.kind, len(op.path)) + op.path)
        if op.kind == OP_RENAME:
            parts.append(_U16.pack(len(op.target)) + op.target)
    return frame(kind, b"".join(parts))


def decode_ops(payload: bytes, allowed: tuple[int, ...]) -> list[Op]:
    """Ops of a CHANGES or MISSED frame; names are bounded here and validated by the caller."""
    if len(payload) < 4:
        raise ProtocolError("change list too short")
    (count,) = _U32.unpack_from(payload, 0)
    if count > MAX_OPS:
        raise ProtocolError(f"change list of {count} items exceeds {MAX_OPS}")
    ops, off = [], 4
    for _ in range(count):
        if off + _OP.size > len(payload):
            raise ProtocolError("truncated change list")
        kind, plen = _OP.unpack_from(payload, off)
        off += _OP.size
        if kind not in allowed or plen > MAX_TARGET or off + plen > len(payload):
            raise ProtocolError(f"malformed change list item (kind {kind}, {plen} bytes)")
        path = payload[off : off + plen]
        off += plen
        target = b""
        if kind == OP_RENAME:
            if off + 2 > len(payload):
                raise ProtocolError("truncated rename")
            (tlen,) = _U16.unpack_from(payload, off)
            off += 2
            if tlen > MAX_TARGET or off + tlen > len(payload):
                raise ProtocolError("malformed rename target")
            target = payload[off : off + tlen]
            off += tlen
        ops.append(Op(kind, path, target))
    if off != len(payload):
        raise ProtocolError("change list length disagrees with its items")
    return ops


def op_batches(ops: list[Op], kind: T) -> list[bytes]:
    """Frames of at most MAX_OPS items and ~1 MiB each."""
    out, batch, size = [], [], 0
    for op in ops:
        batch.append(op)
        size += len(op.path) + len(op.target) + 5
        if len(batch) >= MAX_OPS or size >= 1 << 20:
            out.append(encode_ops(kind, batch))
            batch, size = [], 0
    if batch:
        out.append(encode_ops(kind, batch))
    return out
