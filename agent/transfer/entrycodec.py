"""The manifest's ENTRIES frame: a batch of entries as runs of one directory's entries (see ``encode_entries``),
decoded with every length, count, kind and flag checked before use (``frame.py`` has the rest of the protocol)."""

from __future__ import annotations

import struct
from typing import NamedTuple

from zcrepl.agent.transfer.frame import (
    F_LINKED,
    F_SPARSE,
    F_UNREADABLE,
    MAX_BATCH,
    MAX_DIGEST,
    MAX_TARGET,
    MAX_XATTRS,
    Entry,
    Kind,
    T,
    frame,
)
from zcrepl.core.errors import ProtocolError

_ENTRY = struct.Struct("!BIqQHHBIIBI")
_RUN = struct.Struct("!HH")
_U32 = struct.Struct("!I")
_KIND_OF = {k.value: k for k in Kind}  # a dict lookup per decoded entry costs less than Kind(n)
_FILE_FLAGS = F_SPARSE | F_UNREADABLE | F_LINKED
_MIN_MTIME = -(1 << 62)
_MAX_SIZE = 1 << 60


class Run(NamedTuple):
    """Entries of one directory that follow each other in a batch: ``prefix`` is ``b""`` for names at the root,
    else the directory's path and a ``/``; each entry's path is ``prefix + leaf``."""

    prefix: bytes
    entries: list[Entry]
    leaves: list[bytes]


def encode_entries(entries: list[Entry]) -> bytes:
    """An ENTRIES frame: ``count:u32``, then runs of entries sharing a directory, each ``n:u16 prefix_len:u16
    prefix``, n fixed headers (``_ENTRY``, whose path length is the leaf's), then each entry's leaf, target,
    digest and xattrs in order. The directory travels once per run: the receiver checks it once, decodes the
    headers with one ``iter_unpack``, and never splits a path.

    One pass, each entry unpacked once as the tuple it is (a sender encodes every entry of the tree; a
    no-change re-sync does little else per file)."""
    parts = [_U32.pack(len(entries))]
    pack, run_head = _ENTRY.pack, _RUN.pack
    heads: list[bytes] = []
    bodies: list[bytes] = []
    prefix, cut = b"", -1
    for kind, path, mode, mtime_ns, size, target, digest, uid, gid, flags, xattrs in entries:
        c = path.rfind(b"/") + 1
        if c != cut or not path.startswith(prefix):  # another directory: the run so far is complete
            if heads:
                parts += (run_head(len(heads), cut), prefix)
                parts += heads
                parts += bodies
                heads, bodies = [], []
            prefix, cut = path[:c], c
        leaf = path[c:]
        heads.append(pack(kind, mode, mtime_ns, size, len(leaf), len(target), len(digest), uid, gid, flags,
                          len(xattrs)))
        if target or digest or xattrs:
            bodies += (leaf, target, digest, xattrs)
        else:
            bodies.append(leaf)
    if heads:
        parts += (run_head(len(heads), cut), prefix)
        parts += heads
        parts += bodies
    return frame(T.ENTRIES, b"".join(parts))


def decode_entries(payload: bytes) -> list[Entry]:
    return [e for run in decode_runs(payload) for e in run.entries]


def decode_runs(payload: bytes) -> list[Run]:
    """Decode a batch; structural checks only (names are validated by the receiver)."""
    payload = bytes(payload)
    size, total = _ENTRY.size, len(payload)
    if total < 4:
        raise ProtocolError("ENTRIES frame too short")
    (count,) = _U32.unpack_from(payload, 0)
    if count > MAX_BATCH:
        raise ProtocolError(f"ENTRIES batch of {count} entries exceeds {MAX_BATCH}")
    off, seen = 4, 0
    out: list[Run] = []
    last = None
    while off < total:
        if seen == count:
            raise ProtocolError("ENTRIES frame has trailing bytes after its entries")
        if off + _RUN.size > total:
            raise ProtocolError("ENTRIES frame truncated in a run header")
        n, cut = _RUN.unpack_from(payload, off)
        prefix = payload[off + _RUN.size : off + _RUN.size + cut]
        off += _RUN.size + cut
        seen += n
        if seen > count:
            raise ProtocolError("ENTRIES frame has trailing bytes: more entries than its count")
        if off + n * size > total:
            raise ProtocolError("ENTRIES frame truncated in an entry header")
        # One encoding per batch: a run per directory change, its prefix empty or ending in '/'.
        if not n or prefix == last or (prefix and prefix[-1] != 0x2F):
            raise ProtocolError("ENTRIES run with no entries, its predecessor's directory, or a bad prefix")
        last = prefix
        run, off = _decode_run(payload, prefix, n, off)
        out.append(run)
    if seen != count:
        raise ProtocolError(f"ENTRIES frame truncated in an entry header: {seen} of {count} entries")
    return out


def _decode_run(payload: bytes, prefix: bytes, n: int, off: int) -> tuple[Run, int]:
    """The n entries of one run whose headers start at ``off``; returns the run and where the next one starts."""
    size = _ENTRY.size
    new = tuple.__new__  # Entry's own __new__ is a Python function: a frame per entry
    heads = _ENTRY.iter_unpack(payload[off : off + n * size])
    off += n * size
    entries: list[Entry] = []
    leaves: list[bytes] = []
    for kind, mode, mtime_ns, fsize, llen, tlen, dlen, uid, gid, flags, xlen in heads:
        leaf = payload[off : off + llen]
        off += llen
        if tlen or dlen or xlen:
            # A hard link's target is a path of this manifest (up to a u16); a symlink's is PATH_MAX.
            if (tlen > MAX_TARGET and kind != Kind.HARDLINK) or dlen > MAX_DIGEST or xlen > MAX_XATTRS:
                raise ProtocolError("ENTRIES entry with an oversized symlink target, digest or xattrs")
            target = payload[off : off + tlen]
            digest = payload[off + tlen : off + tlen + dlen]
            xattrs = payload[off + tlen + dlen : off + tlen + dlen + xlen]
            off += tlen + dlen + xlen
            k = _checked_kind(kind, mtime_ns, fsize, flags, target)
        else:
            target = digest = xattrs = b""
            if kind == 1 and not flags & ~_FILE_FLAGS and fsize <= _MAX_SIZE and mtime_ns >= _MIN_MTIME:
                k = Kind.FILE  # the common case, checked inline: what _checked_kind checks of a plain file
            else:
                k = _checked_kind(kind, mtime_ns, fsize, flags, b"")
        entries.append(new(Entry, (k, prefix + leaf, mode, mtime_ns, fsize, target, digest, uid, gid, flags,
                                   xattrs)))
        leaves.append(leaf)
    if off > len(payload):  # slices stop at the end: what they cut short is refused here, before any use
        raise ProtocolError("ENTRIES frame truncated in an entry body")
    if b"/" in b"".join(leaves):
        raise ProtocolError("ENTRIES entry with a '/' in its name: a run holds one directory's entries")
    return Run(prefix, entries, leaves), off


def _checked_kind(kind: int, mtime_ns: int, size: int, flags: int, target: bytes) -> Kind:
    """The entry's kind, once its fields fit it (a ProtocolError otherwise)."""
    k = _KIND_OF.get(kind)
    if k is None:
        raise ProtocolError(f"ENTRIES entry of unknown kind {kind}")
    if mtime_ns < _MIN_MTIME or size > _MAX_SIZE:
        raise ProtocolError("ENTRIES entry with an out-of-range mtime or size")
    if k is not Kind.FILE and (size or flags & ~F_UNREADABLE):
        raise ProtocolError("ENTRIES non-file entry with a size or flags")
    if k not in (Kind.SYMLINK, Kind.HARDLINK) and target:
        raise ProtocolError("ENTRIES entry with a target that is neither a symlink nor a hard link")
    if flags & ~_FILE_FLAGS or (k is Kind.HARDLINK and flags):
        raise ProtocolError(f"ENTRIES entry with unknown flags {flags:#x}")
    return k
