"""The watcher's decisions: a pure state machine that coalesces file system events into ``ChangeSet`` batches.

No I/O and no threads here; time is passed in (DESIGN §4.4). ``zcrepl.agent.watch`` feeds it events from
watchdog and hands what ``take`` returns to the shipper.

How a ChangeSet is applied (the contract the shipper relies on; ``tests/unit/test_watch.py`` checks it
against a model destination over thousands of random histories):

1. ``rescan``: reconcile the whole tree against the destination; the other fields are then empty. The
   reconciliation reads the source before ``on_changes`` returns.
2. ``renames`` in order. A rename replaces whatever is at its destination (recursively) and creates missing
   parent directories (replacing a non-directory in the way: a later read may have put one there, and the
   events that follow restore it). Should its source be missing at the destination anyway, make the destination path
   match the source as it is now (copy its subtree, or remove what is there if the source has nothing).
3. ``deletes`` (paths after the renames): remove recursively; a path that is already gone is fine.
4. ``upserts`` (paths after the renames): make the destination's path match the source *at ship time*:
   its type, metadata, content or link target, replacing what the destination has whatever its type and
   creating parents as renames do; or, if the source has nothing there any more, remove it (recursively).
   An upserted directory stands for its own metadata only; every entry below it that needs sending is
   listed too. Parents of created, deleted and renamed entries are
   upserted because their mtime moved; ``b""`` is the root itself.

Consecutive ChangeSets are applied in order, and ``on_changes`` ships (reads the source for) a set before
it returns. Paths are root-relative ``bytes`` without a leading slash.

Gotchas:

- Names in our own temp namespace (any component starting with ``TEMP_PREFIX``) never appear. A rename
  from a temp name onto a real name is an *arrival* (an upsert), a rename onto a temp name a delete.
- Three facts per path decide what a rename or a delete becomes. *new*: the destination has nothing
  there (only an ``IN_CREATE``, or a scan of a directory that was just created, makes a path new).
  *fresh*: the destination does not have this object (new, moved in from outside, or shipped so recently
  that the shipper may have found it gone). *unsettled*: shipped within ``replay_margin`` seconds, so the
  source was read later than the events that are still arriving, and the destination may be ahead of
  them. A fresh source turns a rename into an upsert of its target (plus a delete of the source when the
  destination may hold something older there); an unsettled one is upserted again under its new name.
  Anything uncertain counts as not new and not fresh only where that is safe.
- After a rescan the whole destination may be ahead: for ``replay_margin`` seconds after ``reconciled()``
  a rename becomes a delete of its source plus an upsert of its target (and its content), and nothing is
  new, cancelled or collapsed; replaying such changes on a destination that already has them is harmless.
- A delete that happened before a rename cannot always be moved behind it (``rm -r d; mkdir d;
  mv x d/x``). Then the pending renames and deletes are sealed into an earlier set (a barrier), so one
  ``take`` may return several sets that must be applied in order.
- ``A -> B -> C`` becomes ``A -> C`` plus a delete of ``B``: the first rename may have replaced something
  at ``B`` (a no-op at the destination when it did not). Likewise ``A -> B -> A`` and ``A -> B; rm B``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from zcrepl.agent.transfer.saferoot import TEMP_PREFIX

__all__ = ["REPLAY_MARGIN", "ChangeSet", "Coalescer", "is_ignored", "parent_of"]

REPLAY_MARGIN = 1.0
"""How late an event may reach the coalescer after the change it describes (seconds). For this long after a
set was shipped, or a reconciliation done, arriving events may describe states older than what the
destination got. It must cover watchdog's pipeline, which holds a lone ``IN_MOVED_FROM`` 0.5 s (and every
event queued behind it); if events ever lag more, a rare race can leave the destination inexact until
the next reconciliation."""

_SEP = b"/"
_IGNORED_INNER = _SEP + TEMP_PREFIX


@dataclass(frozen=True, slots=True)
class ChangeSet:
    """One immutable batch of changes, applied as described in the module docstring."""

    upserts: frozenset[bytes] = frozenset()
    deletes: frozenset[bytes] = frozenset()
    renames: tuple[tuple[bytes, bytes], ...] = ()
    rescan: bool = False
    oldest: float = 0.0
    """Clock time of the oldest change in the set (the watcher's clock, ``time.monotonic`` by default)."""

    def __len__(self) -> int:
        return len(self.upserts) + len(self.deletes) + len(self.renames) + int(self.rescan)


def is_ignored(path: bytes) -> bool:
    """True if any component of ``path`` is in the agent's own temp namespace (``.zc.*``)."""
    return path.startswith(TEMP_PREFIX) or _IGNORED_INNER in path


def parent_of(path: bytes) -> bytes:
    return path.rpartition(_SEP)[0]


def _under(path: bytes, top: bytes) -> bool:
    """``path`` is ``top`` or inside it (``top == b""`` is the root, which holds everything)."""
    return not top or path == top or path.startswith(top + _SEP)


def _overlap(a: bytes, b: bytes) -> bool:
    return _under(a, b) or _under(b, a)


def _rebase(path: bytes, old: bytes, new: bytes) -> bytes:
    return new + path[len(old):]


@dataclass(slots=True)
class _Entry:
    is_dir: bool
    new: bool  # the destination has nothing at this path
    fresh: bool  # the destination does not have this object (new implies fresh)
    hot: bool  # being written: held until quiet (or closed)
    first: float
    last: float


@dataclass(slots=True)
class _Shipped:
    """A released upsert whose source may have been read later than the events still to come."""

    is_dir: bool
    fresh: bool  # the destination may lack it (cleared once the caller saw it still exists after shipping)
    until: float
    content_fresh: bool = False  # a fresh directory: what a scan did not list below it may be missing


@dataclass(slots=True)
class _Delete:
    is_dir: bool
    first: float
    seq: int = 0  # order among renames and deletes (a delete is applied after every rename of its set)


@dataclass(slots=True)
class _Rename:
    src: bytes
    dst: bytes
    first: float
    clobbers: bool = True  # dst may have held something the rename replaced (unknown unless dst was new)
    seq: int = 0


@dataclass(slots=True)
class _Segment:
    renames: list[_Rename] = field(default_factory=list)
    deletes: dict[bytes, _Delete] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.renames or self.deletes)


_NEVER = float("inf")


class Coalescer:
    """Merges events per path and releases them as ``ChangeSet`` lists.

    Release rule: the first event after a release opens a batch that closes ``window`` seconds later. A
    writer's close (with ``close_settles``) closes the batch at once when the batch was opened after at least
    ``window`` seconds without any event: a lone change ships without waiting, while a burst still merges
    (its events come closer together than the window).
    At close, every pending rename and delete is released, and every upsert that is not *hot*. A hot
    path (a regular file created or written and not yet closed) is held until no event touched it for
    ``quiet`` seconds. With ``close_settles=False`` a close does not cool a file down, so every file
    waits for ``quiet`` after its last event. Upserts never overtake renames or deletes: a hot path
    that settles between batches releases whatever renames and deletes are pending with it.

    The caller reports back: ``shipped(now)`` after each set was handed over (its source reads are
    done), ``reconciled(now)`` after a rescan set was.
    """

    def __init__(self, *, window: float, quiet: float, close_settles: bool = True,
                 max_pending: int = 1_000_000, replay_margin: float = REPLAY_MARGIN) -> None:
        if window <= 0 or quiet < 0 or replay_margin < 0:
            raise ValueError("window must be > 0, quiet and replay_margin >= 0")
        self.window = window
        self.quiet = quiet
        self.close_settles = close_settles
        self.max_pending = max_pending
        self.replay_margin = replay_margin
        self._u: dict[bytes, _Entry] = {}
        self._open = _Segment()
        self._sealed: list[_Segment] = []
        self._rescan: float | None = None
        self._batch_deadline: float | None = None
        self._last_event = float("-inf")
        self._lone = False  # the open batch began after a quiet window: a close may release it at once
        self._replay_until = float("-inf")
        self._shipped: dict[bytes, _Shipped] = {}
        self._unstamped: list[bytes] = []
        self._purged = float("-inf")
        self._seq = 0

    # ----------------------------------------------------------------------------------------- feedback

    def reconciled(self, now: float) -> None:
        """The rescan set was handled: its reconciliation read the source no later than ``now``."""
        self._replay_until = now + self.replay_margin

    def unconfirmed(self) -> list[bytes]:
        """Fresh paths in the sets taken since the last ``shipped``: the caller checks which are gone."""
        return [p for p in self._unstamped if (s := self._shipped.get(p)) is not None and s.fresh]

    def shipped(self, now: float, gone: frozenset[bytes] | set[bytes] = frozenset()) -> None:
        """The sets taken so far were handed over: their upserts read the source no later than ``now``.

        ``gone``: paths of :meth:`unconfirmed` that no longer exist. The shipper may have found them gone
        too, so the destination may lack them; every other shipped path is now on the destination (in
        some version), so renaming it later is a real rename again.
        """
        until = now + self.replay_margin
        for p in self._unstamped:
            s = self._shipped.get(p)
            if s is not None and s.until == _NEVER:
                s.until = until
                s.fresh = s.fresh and p in gone
        self._unstamped.clear()
        self._purge(now)

    # ----------------------------------------------------------------------------------------- events

    def request_rescan(self, now: float) -> None:
        """Events were lost: drop everything pending; the next set is ``rescan=True``."""
        if self._rescan is None:
            oldest = self.oldest()  # the dropped changes stay unshipped until the reconciliation
            self._rescan = now if oldest is None else min(now, oldest)
        self._u.clear()
        self._open = _Segment()
        self._sealed.clear()
        self._shipped.clear()
        self._unstamped.clear()
        self._open_batch(now)

    def created(self, path: bytes, *, is_dir: bool, now: float, hot: bool = False, new: bool = True) -> None:
        """``path`` appeared: IN_CREATE, a scan of a directory that just appeared (both ``new``), or a
        name found by polling (``new=False``: something older may have been there)."""
        if self._skip(path, now):
            return
        self._parent_changed(path, now)
        replay = self._replaying(now)
        new = new and not replay and self._unsettled(path, now) is None  # a read ahead may have shipped it
        self._upsert(path, is_dir=is_dir, now=now, new=new, fresh=not replay, hot=hot)
        self._check_size(now)

    def arrived(self, path: bytes, *, is_dir: bool, now: float) -> bool:
        """``path`` was moved in from outside the tree or from our temp namespace; it may have replaced
        something. Returns True when the caller should scan it (a directory arrives with its content)."""
        if self._skip(path, now):
            return False
        self._parent_changed(path, now)
        if is_dir:
            self._drop_u_under(path)
        self._upsert(path, is_dir=is_dir, now=now, new=False, fresh=not self._replaying(now), hot=False,
                     arrival=True)
        self._check_size(now)
        return is_dir

    def modified(self, path: bytes, *, now: float, is_dir: bool = False, hot: bool = True) -> None:
        """Content written (IN_MODIFY); ``hot=False`` for changes seen by polling."""
        if self._skip(path, now):
            return
        self._upsert(path, is_dir=is_dir, now=now, new=False, fresh=False, hot=hot and not is_dir)
        self._check_size(now)

    def attrib(self, path: bytes, *, is_dir: bool, now: float) -> None:
        """Metadata changed (IN_ATTRIB: mode, owner, times, xattrs, link count)."""
        if self._skip(path, now):
            return
        self._upsert(path, is_dir=is_dir, now=now, new=False, fresh=False, hot=None)
        self._check_size(now)

    def closed(self, path: bytes, *, now: float) -> None:
        """A writer closed the file (IN_CLOSE_WRITE)."""
        if self._skip(path, now):
            return
        self._upsert(path, is_dir=False, now=now, new=False, fresh=False, hot=not self.close_settles)
        if self.close_settles and self._lone and self._batch_deadline is not None:
            self._batch_deadline = min(self._batch_deadline, now)
        self._check_size(now)

    def deleted(self, path: bytes, *, is_dir: bool, now: float) -> None:
        """``path`` was removed, or moved out of the tree."""
        if not path or self._skip(path, now):
            return
        self._parent_changed(path, now)
        entry = self._u.pop(path, None)
        if is_dir or (entry is not None and entry.is_dir):
            self._drop_u_under(path)
        self._forget_shipped(path)
        if entry is not None and entry.new and not self._renamed_into(path):
            return  # created and removed while pending: nothing to tell the destination
        target, clobbered = path, []
        while (i := self._origin(target)) is not None:  # deleting a renamed-to path deletes the original
            r = self._open.renames.pop(i)
            if r.clobbers:
                clobbered.append(r.dst)  # ... and whatever that rename had replaced at its target
            target = r.src
        self._add_delete(target, is_dir, now)
        for p in clobbered:
            self._add_delete(p, True, now)
        self._check_size(now)

    def listed(self, top: bytes, found: list[tuple[bytes, bool, bool]], *, now: float) -> None:
        """What a scan of directory ``top`` found below it: ``(path, is_dir, is_regular_file)``, parents
        first. Called for every path ``arrived``/``moved`` asked to scan, and for each created directory."""
        entry = self._u.get(top)
        new = entry is not None and entry.new
        for path, is_dir, is_reg in found:
            self.created(path, is_dir=is_dir, now=now, hot=is_reg, new=new)

    def moved(self, src: bytes, dst: bytes, *, is_dir: bool, now: float) -> list[bytes]:  # noqa: C901
        """A rename inside the tree. Returns the directories the caller should scan (and report with
        ``listed``): content the destination lacks, which the rename may have taken along before an
        earlier scan could list it."""
        if self._rescan is not None:
            return []
        src_ign, dst_ign = is_ignored(src), is_ignored(dst)
        if src_ign and dst_ign:
            return []
        if src_ign:
            return [dst] if self.arrived(dst, is_dir=is_dir, now=now) else []
        if dst_ign:
            self.deleted(src, is_dir=is_dir, now=now)
            return []
        if src == dst or not src or not dst:
            return []
        self._open_batch(now)
        self._parent_changed(src, now)
        self._parent_changed(dst, now)
        if self._replaying(now):
            return self._as_upsert(src, dst, is_dir=is_dir, now=now, delete_src=True)
        entry = self._u.get(src)
        if self._fresh(src, now) and not self._renamed_into(src):
            # The destination lacks this object: it is an upsert of dst (its pending content moves along).
            return self._as_upsert(src, dst, is_dir=is_dir, now=now,
                                   delete_src=not (entry is not None and entry.new))
        target = self._u.get(dst)  # known absent at the destination: new, with no older object to delete
        clobbers = not (target is not None and target.new and dst not in self._open.deletes)
        if self._needs_barrier(src, dst):
            self._seal()
        i = self._chain(src, dst)
        self._drop_u_under(dst)  # a rename replaces its target, recursively
        deletes = self._open.deletes
        for p in [p for p in deletes if _under(p, dst)]:
            del deletes[p]
        self._rekey_u(src, dst)
        for p in [p for p in deletes if _under(p, src) and p != src]:
            deletes[_rebase(p, src, dst)] = deletes.pop(p)
        renames = self._open.renames
        self._seq += 1
        if i is None:
            renames.append(_Rename(src, dst, now, clobbers, self._seq))
        else:
            first = renames[i]  # X -> src, now X -> dst: src is skipped, so what X replaced there must go
            if first.clobbers:
                self._add_delete(src, True, first.first)
            if first.src == dst:
                del renames[i]  # X -> src -> X
            else:
                renames[i] = _Rename(first.src, dst, first.first, clobbers, first.seq)
        rescan = self._verify_unsettled(src, dst, now)
        self._check_size(now)
        prefix = dst + _SEP
        rescan += [p for p, e in self._u.items() if e.is_dir and e.fresh and (p == dst or p.startswith(prefix))]
        return sorted(set(rescan))

    # ----------------------------------------------------------------------------------------- output

    def deadline(self) -> float | None:
        """When ``take`` has something to do next, or None when idle (no busy waiting on hot paths)."""
        if self._batch_deadline is not None:
            return self._batch_deadline
        hot = [e.last + self.quiet for e in self._u.values() if e.hot]
        return min(hot) if hot else None

    def take(self, now: float, max_batch: int) -> list[ChangeSet]:
        """Release what is due at ``now`` as ordered sets of at most ``max_batch`` items each."""
        if self._rescan is not None:
            oldest = self._rescan
            self._rescan = None
            self._batch_deadline = None
            self._replay_until = _NEVER  # until reconciled() says when the reconciliation read the source
            return [ChangeSet(rescan=True, oldest=oldest)]
        early = self._batch_deadline is not None and now < self._batch_deadline
        if early and not any(e.hot and now - e.last >= self.quiet for e in self._u.values()):
            return []  # before the batch closes, only hot paths that settled are released (with renames)
        self._batch_deadline = None
        self._purge(now)
        ready = [(p, e) for p, e in self._u.items() if not e.hot or now - e.last >= self.quiet]
        segments = [s for s in (*self._sealed, self._open) if s]
        self._sealed.clear()
        self._open = _Segment()
        for p, e in ready:
            del self._u[p]
            old = self._shipped.get(p)
            fresh = e.fresh or (old is not None and old.fresh)
            content = e.is_dir and (e.fresh or (old is not None and old.content_fresh))
            self._shipped[p] = _Shipped(e.is_dir, fresh, _NEVER, content)
            self._unstamped.append(p)
        return _chunks(segments, ready, max(1, max_batch))

    def pending(self) -> int:
        """Changes not yet released (paths, renames, deletes, and a pending rescan)."""
        n = len(self._u) + int(self._rescan is not None)
        return n + sum(len(s.renames) + len(s.deletes) for s in (*self._sealed, self._open))

    def oldest(self) -> float | None:
        """Clock time of the oldest change not yet released, or None."""
        times = [e.first for e in self._u.values()]
        for s in (*self._sealed, self._open):
            times.extend(r.first for r in s.renames)
            times.extend(d.first for d in s.deletes.values())
        if self._rescan is not None:
            times.append(self._rescan)
        return min(times) if times else None

    # ----------------------------------------------------------------------------------------- internals

    def _skip(self, path: bytes, now: float) -> bool:
        if self._rescan is not None or is_ignored(path):
            return True  # a pending rescan covers everything that happens before it is delivered
        self._open_batch(now)
        return False

    def _replaying(self, now: float) -> bool:
        return now < self._replay_until

    def _open_batch(self, now: float) -> None:
        if self._batch_deadline is None:
            self._batch_deadline = now + self.window
            self._lone = now - self._last_event >= self.window
        self._last_event = max(self._last_event, now)

    def _check_size(self, now: float) -> None:
        if self.pending() > self.max_pending:
            self.request_rescan(now)

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
        self._u[path] = _Entry(is_dir, new, fresh or new, bool(hot), now, now)

    def _as_upsert(self, src: bytes, dst: bytes, *, is_dir: bool, now: float, delete_src: bool) -> list[bytes]:
        """Ship ``dst`` as an upsert instead of renaming ``src``; returns ``[dst]`` if it must be scanned."""
        target = self._u.get(dst)
        dst_absent = target is not None and target.new
        self._drop_u_under(dst)
        # Unlike a rename, an upsert leaves what the destination has below dst: keep remembering it.
        self._rekey_u(src, dst)
        self._forget_shipped(src)  # the destination's copy, if any, goes with the delete of src
        moved = self._u.get(dst)
        if moved is None:
            moved = self._u[dst] = _Entry(is_dir, False, True, False, now, now)
        moved.fresh, moved.last, moved.is_dir = True, now, is_dir  # the event knows; a scan may have run ahead
        old = self._open.deletes.get(dst)
        if old is not None and not (old.is_dir or moved.is_dir):
            del self._open.deletes[dst]  # file over a deleted file: the upsert replaces it
            moved.new = False
        elif old is None and not dst_absent:
            moved.new = False  # it replaced something: removing it later must reach the destination
        if delete_src:
            self._add_delete(src, is_dir, now)
        self._check_size(now)
        return [dst] if moved.is_dir else []

    def _verify_unsettled(self, src: bytes, dst: bytes, now: float) -> list[bytes]:
        """Recently shipped paths that this rename moved: the destination may hold a later read of their
        old name (the source was read after the rename), so upsert them again under the new one. Returns
        the fresh directories among them (their content may be missing at the destination)."""
        self._forget_shipped(dst)
        moved = [(p, s) for p, s in self._shipped.items() if _under(p, src) and s.until >= now]
        for p, _ in moved:
            del self._shipped[p]
        for p, s in moved:
            q = _rebase(p, src, dst)
            self._shipped[q] = s
            if q not in self._u:
                self._u[q] = _Entry(s.is_dir, False, s.fresh, False, now, now)
        return [_rebase(p, src, dst) for p, s in moved if s.is_dir and (s.fresh or s.content_fresh)]

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

    def _unsettled(self, path: bytes, now: float) -> _Shipped | None:
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
        deletes[path] = _Delete(is_dir or (old is not None and old.is_dir), old.first if old else now, self._seq)

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
            self._u[_rebase(p, src, dst)] = e

    def _renamed_into(self, path: bytes) -> bool:
        """Some pending rename put content at or below ``path`` (so the destination has it)."""
        return any(_under(r.dst, path) for r in self._open.renames)

    def _chain(self, src: bytes, dst: bytes) -> int | None:
        """Index of a pending rename X -> src that this rename src -> dst can extend into X -> dst."""
        renames = self._open.renames
        for i in range(len(renames) - 1, -1, -1):
            r = renames[i]
            if not (_overlap(r.src, src) or _overlap(r.dst, src)):
                continue
            if r.dst != src:
                return None
            later = renames[i + 1:]
            if any(_overlap(x, y) for lr in later for x in (lr.src, lr.dst) for y in (r.src, dst)):
                return None
            if any(d.seq > r.seq and (_overlap(p, r.src) or _overlap(p, dst))
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
            if not (_overlap(r.src, path) or _overlap(r.dst, path)):
                continue
            if r.dst != path:
                return None
            if any(_overlap(lr.src, r.src) or _overlap(lr.dst, r.src) for lr in renames[i + 1:]):
                return None
            if any(_under(p, r.src) for p in self._u) or any(_under(p, r.src) for p in self._open.deletes):
                return None
            return i
        return None

    def _needs_barrier(self, src: bytes, dst: bytes) -> bool:
        """A pending delete that must happen before this rename and cannot be moved after it."""
        return any(_under(src, p) or (_under(dst, p) and dst != p) for p in self._open.deletes)

    def _seal(self) -> None:
        sealed = self._open
        self._sealed.append(sealed)
        self._open = _Segment()
        for r in sealed.renames:  # the destination now has r.dst and (via mkdir -p) its parents
            p = r.dst
            while True:
                entry = self._u.get(p)
                if entry is not None:
                    entry.new = False
                if not p:
                    break
                p = parent_of(p)


def _chunks(segments: list[_Segment], ready: list[tuple[bytes, _Entry]], max_batch: int) -> list[ChangeSet]:
    """Cut the ordered operations into sets. A set never mixes two segments, because within a set all
    renames are applied before all deletes; upserts (applied last) only join the final segment."""
    out: list[ChangeSet] = []
    tail: list[tuple[str, bytes, bytes, float]] = []
    for seg in segments:
        items = [("r", r.src, r.dst, r.first) for r in seg.renames]
        items += [("d", p, b"", d.first) for p, d in seg.deletes.items()]
        if tail:
            out.append(_set(tail))
        tail = []
        for i in range(0, len(items), max_batch):
            if tail:
                out.append(_set(tail))
            tail = items[i:i + max_batch]
    for p, e in ready:
        if len(tail) >= max_batch:
            out.append(_set(tail))
            tail = []
        tail.append(("u", p, b"", e.first))
    if tail:
        out.append(_set(tail))
    return out


def _set(items: list[tuple[str, bytes, bytes, float]]) -> ChangeSet:
    return ChangeSet(
        upserts=frozenset(p for k, p, _, _ in items if k == "u"),
        deletes=frozenset(p for k, p, _, _ in items if k == "d"),
        renames=tuple((p, q) for k, p, q, _ in items if k == "r"),
        oldest=min(t for *_, t in items),
    )
