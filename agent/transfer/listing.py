"""What the receiver keeps of a manifest as it streams in: state per directory, not per entry.

A job's manifest lists each directory's entries in one contiguous run (the scanner lists a directory whole
before it descends), so the receiver holds names for one directory at a time: the one being listed. When an
entry of another directory arrives, the current one is *closed*: its names go to ``--delete``'s spill file
(a nameless temp file, read back one directory at a time when the transfer finishes) or, without ``--delete``,
nowhere. A closed directory takes no more entries: a later entry in it is a protocol error, which is also what
keeps a duplicate name from slipping in after its directory closed.

What is held, then: the components of every directory announced and not yet listed (the walk's frontier: at
most one record per directory of the tree), the names of the directory being listed, and the path of each
file the source flagged ``F_LINKED`` (a file with other names, which a later HARDLINK entry may point at).
Nothing grows with the number of files in the tree.

A watch session's restricted manifest (changed paths in sorted order, ``changes.py``) revisits directories,
so there nothing is closed: it lists only what changed, and its size is the change set's.
"""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

from zcrepl.agent.transfer.frame import F_LINKED, F_UNREADABLE, Entry, Kind
from zcrepl.agent.transfer.saferoot import MAX_DEPTH, MAX_NAME, MAX_PATH, TEMP_PREFIX, validate_name, validate_relpath
from zcrepl.core.errors import ProtocolError, UnsafePath
from zcrepl.core.paths import show

__all__ = ["Listing"]

_LEN = struct.Struct("!I")
_SPILL_BUF = 1 << 20  # bytes of names gathered before they are written to the spill file


@dataclass(slots=True)
class _Dir:
    parts: tuple[bytes, ...]
    names: set[bytes] = field(default_factory=set)


class Listing:
    """The receiver's view of the manifest's directories (see the module docstring).

    ``keep_names``: closed directories' names are kept (in the spill file) for ``--delete``.
    ``contiguous``: a job's manifest; False for a watch session's, where nothing is closed.
    """

    def __init__(self, *, keep_names: bool, contiguous: bool = True) -> None:
        self.keep_names = keep_names
        self.contiguous = contiguous
        self.open: dict[bytes, _Dir] = {b"": _Dir(())}  # announced, not closed
        self.current = b""  # the directory whose entries arrive now
        self.linkable: set[bytes] = set()  # files flagged F_LINKED: what a HARDLINK may name
        self.closed = 0
        self._spill: IO[bytes] | None = None
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    def admit(self, e: Entry) -> tuple[bytes, ...]:
        """Check one entry (not the root) against what came before; returns its path's components.

        Raises UnsafePath for a bad name or an unknown parent, ProtocolError for a duplicate, a closed
        directory, or a hard link to a file the source did not flag."""
        parent, _, leaf = e.path.rpartition(b"/")
        if parent != self.current and self.contiguous and parent in self.open:
            self._close(self.current)
            self.current = parent
        d = self.open.get(parent)
        if d is None or (not parent and e.path != leaf):  # "/x" has the root as its parent too
            # Also what stops a name through a symlink the same manifest created (CVE-2024-12087).
            validate_relpath(e.path)  # the better message for '..', '/', '//' and friends
            raise UnsafePath(f"{show(e.path)}: its parent is not a directory announced earlier in the manifest, or "
                             "its directory's entries were not sent together")
        if self.contiguous and parent != self.current:
            raise ProtocolError(f"{show(e.path)}: entries of two directories are interleaved in the manifest")
        # The parent passed these checks when it was admitted: only the new component is left to check.
        validate_name(leaf)  # UnsafePath: '..', '.', '', NUL, our temp prefix...
        if len(e.path) > MAX_PATH or len(d.parts) >= MAX_DEPTH:
            validate_relpath(e.path)
        if leaf in d.names:
            raise ProtocolError(f"duplicate name in the manifest: {show(e.path)}")
        if e.kind is Kind.HARDLINK and e.target not in self.linkable:
            raise ProtocolError(f"{show(e.path)}: a hard link to something that is not a file of this manifest")
        parts = (*d.parts, leaf)
        d.names.add(leaf)
        if e.kind is Kind.DIR and not e.flags & F_UNREADABLE:
            # An unreadable source directory lists nothing: nothing in it is deleted, nothing below it admitted.
            self.open[e.path] = _Dir(parts)
        elif e.kind is Kind.FILE and e.flags & F_LINKED:
            self.linkable.add(e.path)
        return parts

    def admit_run(self, prefix: bytes, entries: list[Entry], leaves: list[bytes]) -> tuple[bytes, ...]:
        """``admit`` for a run of one directory's entries (``entrycodec.Run``: path = prefix + leaf, none the root),
        with the checks made once for the run; returns the directory's components."""
        parent = prefix[:-1]
        if parent != self.current and self.contiguous and parent in self.open:
            self._close(self.current)
            self.current = parent
        d = self.open.get(parent)
        if d is None or prefix == b"/":
            validate_relpath(entries[0].path)
            raise UnsafePath(f"{show(entries[0].path)}: its parent is not a directory announced earlier in the "
                             "manifest, or its directory's entries were not sent together")
        if self.contiguous and parent != self.current:
            raise ProtocolError(f"{show(entries[0].path)}: entries of two directories are interleaved in the manifest")
        fresh = set(leaves)
        _check_names(prefix, d, entries, leaves, fresh)
        for e, leaf in zip(entries, leaves, strict=True):
            if e.kind is Kind.FILE:
                if e.flags & F_LINKED:
                    self.linkable.add(e.path)
            elif e.kind is Kind.DIR:
                if not e.flags & F_UNREADABLE:
                    self.open[e.path] = _Dir((*d.parts, leaf))
            elif e.kind is Kind.HARDLINK and e.target not in self.linkable:
                raise ProtocolError(f"{show(e.path)}: a hard link to something that is not a file of this manifest")
        d.names |= fresh
        return d.parts

    def parts_of(self, dpath: bytes) -> tuple[bytes, ...] | None:
        """Components of a directory still open (the current one, or one announced and not yet listed)."""
        d = self.open.get(dpath)
        return d.parts if d is not None else None

    def held(self) -> int:
        """Names and directory records held in memory now (what the bound is about)."""
        return len(self.open) + sum(len(d.names) for d in self.open.values()) + len(self.linkable)

    def _close(self, dpath: bytes) -> None:
        d = self.open.pop(dpath)
        self.closed += 1
        if self.keep_names:
            self._write(dpath, d.names)

    def _write(self, dpath: bytes, names: set[bytes]) -> None:
        if self._spill is None:
            self._spill = tempfile.TemporaryFile(prefix="zc-listing-")  # noqa: SIM115 - closed in close()
        rec = [_LEN.pack(len(dpath)), dpath, _LEN.pack(len(names))]
        for n in names:
            rec += (_LEN.pack(len(n)), n)
        blob = b"".join(rec)
        self._pending.append(blob)
        self._pending_bytes += len(blob)
        if self._pending_bytes >= _SPILL_BUF:
            self._flush()

    def _flush(self) -> None:
        if self._spill is not None and self._pending:
            self._spill.write(b"".join(self._pending))
        self._pending = []
        self._pending_bytes = 0

    def directories(self) -> Iterator[tuple[bytes, set[bytes]]]:
        """Every listed directory with the names the manifest gave it, one at a time: closed ones from the
        spill file, then those still open. Only with ``keep_names``."""
        assert self.keep_names
        self._flush()
        if self._spill is not None:
            f = self._spill
            f.seek(0)
            while True:
                head = f.read(_LEN.size)
                if not head:
                    break
                dpath = f.read(_LEN.unpack(head)[0])
                (count,) = _LEN.unpack(f.read(_LEN.size))
                names = set()
                for _ in range(count):
                    names.add(f.read(_LEN.unpack(f.read(_LEN.size))[0]))
                yield dpath, names
            f.seek(0, os.SEEK_END)
        for dpath, d in list(self.open.items()):
            yield dpath, d.names

    def close(self) -> None:
        if self._spill is not None:
            self._spill.close()
            self._spill = None


def _check_names(prefix: bytes, d: _Dir, entries: list[Entry], leaves: list[bytes], fresh: set[bytes]) -> None:
    """What ``Listing.admit`` checks of each name, for a run: validate_name's checks by C scans of one string
    (per name only when one hits), path length and depth, duplicates within the run and with earlier runs."""
    joined = b"/" + b"/".join(leaves)
    longest = max(map(len, leaves))
    if (longest > MAX_NAME or joined.count(b"/") != len(leaves) or b"//" in joined or joined[-1] == 0x2F
            or b"\0" in joined or b"/" + TEMP_PREFIX in joined or b"." in fresh or b".." in fresh):
        for leaf in leaves:
            validate_name(leaf)
    if len(prefix) + longest > MAX_PATH or len(d.parts) >= MAX_DEPTH:
        for e in entries:
            validate_relpath(e.path)
    if len(fresh) != len(leaves) or not fresh.isdisjoint(d.names):
        seen = set(d.names)
        for e, leaf in zip(entries, leaves, strict=True):
            if leaf in seen:
                raise ProtocolError(f"duplicate name in the manifest: {show(e.path)}")
            seen.add(leaf)
