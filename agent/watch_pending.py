"""The watcher's pending state: what waits per path (upserts, recently shipped paths) and the ordered
renames and deletes, with the operations that keep their order rules (extending a rename chain, finding a
delete's origin, sealing a barrier). ``Coalescer`` (``zcrepl.agent.watch_coalesce``) builds its event rules on
these; the facts *new*, *fresh* and *unsettled* are explained in its module docstring. No I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from zcrepl.agent.watch_changeset import overlap, parent_of, rebase, under

__all__ = ["NEVER", "Delete", "Entry", "PendingState", "Rename", "Segment", "Shipped"]

_SEP = b"/"


@dataclass(slots=True)
class Entry:
    is_dir: bool
    new: bool  # the destination has nothing at this path
    fresh: bool  # the destination does not have this object (new implies fresh)
    hot: bool  # being written: held until quiet (or closed)
    first: float
    last: float


@dataclass(slots=True)
class Shipped:
    """A released upsert whose source may have been read later than the events still to come."""

    is_dir: bool
    fresh: bool  # the destination may lack it (cleared once the caller saw it still exists after shipping)
    until: float
    content_fresh: bool = False  # a fresh directory: what a scan did not list below it may be missing


@dataclass(slots=True)
class Delete:
    is_dir: bool
    first: float
    seq: int = 0  # order among renames and deletes (a delete is applied after every rename of its set)


@dataclass(slots=True)
class Rename:
    src: bytes
    dst: bytes
    first: float
    clobbers: bool = True  # dst may have held something the rename replaced (unknown unless dst was new)
    seq: int = 0


@dataclass(slots=True)
class Segment:
    renames: list[Rename] = field(default_factory=list)
    deletes: dict[bytes, Delete] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.renames or self.deletes)


NEVER = float("inf")


class PendingState:
    """Pending upserts (``_u``), recently shipped paths (``_shipped``) and the segments of renames and
    deletes (``_sealed`` in order, then ``_open``)."""

    def __init__(self, replay_margin: float) -> None:
        self.replay_margin = replay_margin
        self._u: dict[bytes, Entry] = {}
        self._open = Segment()
        self._sealed: list[Segment] = []
        self._shipped: dict[bytes, Shipped] = {}
        self._unstamped: list[bytes] = []
        self._purged = float("-inf")
        self._seq = 0

    def _upsert(self, path: bytes, *, is_dir: bool, now: float, new: bool, fresh: bool, hot: bool | None,
                arrival: bool = False) -> None:
        entry = self._u.get(path)
        if entry is not None:
            entry.last = now
            entry.is_dir = is_dir
            if hot is not None:
                entry.hot = hot
            if arrival:
                entry.new, entry.fresh = False, fresh
            return
        old = self._open.deletes.get(path)
        if old is not None and not (old.is_dir or is_dir):
            del self._open.deletes[path]  # a file upsert replaces the deleted file
            new = False
        # (a directory on either side keeps the delete: the destination drops the old tree first)
        self._u[path] = Entry(is_dir, new, fresh or new, bool(hot), now, now)


    def _record_rename(self, src: bytes, dst: bytes, now: float) -> None:
        """Add the real rename ``src -> dst`` to the open segment (behind a barrier when a pending delete
        must stay before it), extending a chain ``X -> src`` into ``X -> dst`` where that is exact."""
        target = self._u.get(dst)  # known absent at the destination: new, with no older object to delete
        clobbers = not (target is not None and target.new and dst not in self._open.deletes)
        if self._needs_barrier(src, dst):
            self._seal()
        i = self._chain(src, dst)
        self._drop_u_under(dst)  # a rename replaces its target, recursively
        deletes = self._open.deletes
        for p in [p for p in deletes if under(p, dst)]:
            del deletes[p]
        self._rekey_u(src, dst)
        for p in [p for p in deletes if under(p, src) and p != src]:
            deletes[rebase(p, src, dst)] = deletes.pop(p)
        renames = self._open.renames
        self._seq += 1
        if i is None:
            renames.append(Rename(src, dst, now, clobbers, self._seq))
            return
        first = renames[i]  # X -> src, now X -> dst: src is skipped, so what X replaced there must go
        if first.clobbers:
            self._add_delete(src, True, first.first)
        if first.src == dst:
            del renames[i]  # X -> src -> X
        else:
            renames[i] = Rename(first.src, dst, first.first, clobbers, first.seq)

    def _verify_unsettled(self, src: bytes, dst: bytes, now: float) -> list[bytes]:
        """Recently shipped paths that this rename moved: the destination may hold a later read of their
        old name (the source was read after the rename), so upsert them again under the new one. Returns
        the fresh directories among them (their content may be missing at the destination)."""
        self._forget_shipped(dst)
        moved = [(p, s) for p, s in self._shipped.items() if under(p, src) and s.until >= now]
        for p, _ in moved:
            del self._shipped[p]
        for p, s in moved:
            q = rebase(p, src, dst)
            self._shipped[q] = s
            if q not in self._u:
                self._u[q] = Entry(s.is_dir, False, s.fresh, False, now, now)
        return [rebase(p, src, dst) for p, s in moved if s.is_dir and (s.fresh or s.content_fresh)]

    def _fresh(self, path: bytes, now: float) -> bool:
        """The destination may lack the object at ``path``: it, or a directory above it, is fresh (pending or
        recently shipped), and no pending rename brought it there. Erring towards fresh is safe: a rename
        of something fresh becomes a delete plus an upsert."""
        dsts = {r.dst for r in self._open.renames}
        entry, shipped = self._u.get(path), self._unsettled(path, now)
        if (entry is not None and entry.fresh) or (shipped is not None and shipped.fresh):
            return True
        if shipped is not None:
            return False  # shipped and seen to exist afterwards: the destination has it
        p = path
        while p:
            if p in dsts:
                return False
            p = parent_of(p)
            entry, shipped = self._u.get(p), self._unsettled(p, now)
            if (entry is not None and entry.fresh) or (shipped is not None and shipped.content_fresh):
                return True
        return False

    def _purge(self, now: float) -> None:
        if now - self._purged >= self.replay_margin / 4:
            self._purged = now
            for p in [p for p, s in self._shipped.items() if s.until < now]:
                del self._shipped[p]

    def _unsettled(self, path: bytes, now: float) -> Shipped | None:
        s = self._shipped.get(path)
        return s if s is not None and s.until >= now else None

    def _forget_shipped(self, top: bytes) -> None:
        self._shipped.pop(top, None)
        if self._shipped:
            prefix = top + _SEP
            for p in [p for p in self._shipped if p.startswith(prefix)]:
                del self._shipped[p]

    def _parent_changed(self, path: bytes, now: float) -> None:
        parent = parent_of(path)
        if parent not in self._u and parent in self._open.deletes:
            return  # a stale event below a deleted directory
        self._upsert(parent, is_dir=True, now=now, new=False, fresh=False, hot=None)

    def _add_delete(self, path: bytes, is_dir: bool, now: float) -> None:
        deletes = self._open.deletes
        if is_dir:
            prefix = path + _SEP
            for p in [p for p in deletes if p.startswith(prefix)]:
                del deletes[p]
        old = deletes.get(path)
        self._seq += 1
        deletes[path] = Delete(is_dir or (old is not None and old.is_dir), old.first if old else now, self._seq)

    def _drop_u_under(self, top: bytes) -> None:
        self._u.pop(top, None)
        prefix = top + _SEP
        for p in [p for p in self._u if p.startswith(prefix)]:
            del self._u[p]

    def _rekey_u(self, src: bytes, dst: bytes) -> None:
        entry = self._u.pop(src, None)
        prefix = src + _SEP
        moved = [(p, self._u.pop(p)) for p in [p for p in self._u if p.startswith(prefix)]]
        if entry is not None:
            self._u[dst] = entry
        for p, e in moved:
            self._u[rebase(p, src, dst)] = e

    def _renamed_into(self, path: bytes) -> bool:
        """Some pending rename put content at or below ``path`` (so the destination has it)."""
        return any(under(r.dst, path) for r in self._open.renames)

    def _chain(self, src: bytes, dst: bytes) -> int | None:
        """Index of a pending rename X -> src that this rename src -> dst can extend into X -> dst."""
        renames = self._open.renames
        for i in range(len(renames) - 1, -1, -1):
            r = renames[i]
            if not (overlap(r.src, src) or overlap(r.dst, src)):
                continue
            if r.dst != src:
                return None
            later = renames[i + 1:]
            if any(overlap(x, y) for lr in later for x in (lr.src, lr.dst) for y in (r.src, dst)):
                return None
            if any(d.seq > r.seq and (overlap(p, r.src) or overlap(p, dst))
                   for p, d in self._open.deletes.items()):
                return None  # X -> dst would run before that delete, which was applied in between
            return i
        return None

    def _origin(self, path: bytes) -> int | None:
        """Index of the pending rename X -> path whose removal turns a delete of ``path`` into one of X.

        Only when nothing happened at X (or inside it) since: the delete is applied after all renames,
        so X must still name the original object then.
        """
        renames = self._open.renames
        for i in range(len(renames) - 1, -1, -1):
            r = renames[i]
            if not (overlap(r.src, path) or overlap(r.dst, path)):
                continue
            if r.dst != path:
                return None
            if any(overlap(lr.src, r.src) or overlap(lr.dst, r.src) for lr in renames[i + 1:]):
                return None
            if any(under(p, r.src) for p in self._u) or any(under(p, r.src) for p in self._open.deletes):
                return None
            return i
        return None

    def _needs_barrier(self, src: bytes, dst: bytes) -> bool:
        """A pending delete that must happen before this rename and cannot be moved after it."""
        return any(under(src, p) or (under(dst, p) and dst != p) for p in self._open.deletes)

    def _seal(self) -> None:
        sealed = self._open
        self._sealed.append(sealed)
        self._open = Segment()
        for r in sealed.renames:  # the destination now has r.dst and (via mkdir -p) its parents
            p = r.dst
            while True:
                entry = self._u.get(p)
                if entry is not None:
                    entry.new = False
                if not p:
                    break
                p = parent_of(p)


