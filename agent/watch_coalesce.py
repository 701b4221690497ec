"""The watcher's decisions: a pure state machine that coalesces file system events into ``ChangeSet`` batches.

No I/O and no threads here; time is passed in (DESIGN §4.4). ``zcrepl.agent.watch`` feeds it events from
watchdog and hands what ``take`` returns to the shipper.

The ChangeSet contract the shipper relies on is in ``zcrepl.agent.watch_changeset``; the pending state
and its order operations are in ``zcrepl.agent.watch_pending``.

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

from zcrepl.agent.watch_changeset import ChangeSet, is_ignored, parent_of
from zcrepl.agent.watch_pending import NEVER, Entry, PendingState, Segment, Shipped

__all__ = ["REPLAY_MARGIN", "ChangeSet", "Coalescer", "is_ignored", "parent_of"]

REPLAY_MARGIN = 1.0
"""How late an event may reach the coalescer after the change it describes (seconds). For this long after a
set was shipped, or a reconciliation done, arriving events may describe states older than what the
destination got. It must cover watchdog's pipeline, which holds a lone ``IN_MOVED_FROM`` 0.5 s (and every
event queued behind it); if events ever lag more, a rare race can leave the destination inexact until
the next reconciliation."""


class Coalescer(PendingState):
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
        super().__init__(replay_margin)
        self.window = window
        self.quiet = quiet
        self.close_settles = close_settles
        self.max_pending = max_pending
        self._rescan: float | None = None
        self._batch_deadline: float | None = None
        self._last_event = float("-inf")
        self._lone = False  # the open batch began after a quiet window: a close may release it at once
        self._replay_until = float("-inf")

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
            if s is not None and s.until == NEVER:
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
        self._open = Segment()
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

    def moved(self, src: bytes, dst: bytes, *, is_dir: bool, now: float) -> list[bytes]:
        """A rename inside the tree. Returns the directories the caller should scan (and report with
        ``listed``): content the destination lacks, which the rename may have taken along before an
        earlier scan could list it."""
        if self._rescan is not None:
            return []
        if is_ignored(src) or is_ignored(dst):
            return self._moved_across_temp(src, dst, is_dir=is_dir, now=now)
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
        self._record_rename(src, dst, now)
        rescan = self._verify_unsettled(src, dst, now)
        self._check_size(now)
        prefix = dst + b"/"
        rescan += [p for p, e in self._u.items() if e.is_dir and e.fresh and (p == dst or p.startswith(prefix))]
        return sorted(set(rescan))

    def _moved_across_temp(self, src: bytes, dst: bytes, *, is_dir: bool, now: float) -> list[bytes]:
        """A rename out of our temp namespace is an arrival, one into it a delete (see the Gotchas)."""
        src_ign, dst_ign = is_ignored(src), is_ignored(dst)
        if src_ign and dst_ign:
            return []
        if src_ign:
            return [dst] if self.arrived(dst, is_dir=is_dir, now=now) else []
        self.deleted(src, is_dir=is_dir, now=now)
        return []

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
            self._replay_until = NEVER  # until reconciled() says when the reconciliation read the source
            return [ChangeSet(rescan=True, oldest=oldest)]
        early = self._batch_deadline is not None and now < self._batch_deadline
        if early and not any(e.hot and now - e.last >= self.quiet for e in self._u.values()):
            return []  # before the batch closes, only hot paths that settled are released (with renames)
        self._batch_deadline = None
        self._purge(now)
        ready = [(p, e) for p, e in self._u.items() if not e.hot or now - e.last >= self.quiet]
        segments = [s for s in (*self._sealed, self._open) if s]
        self._sealed.clear()
        self._open = Segment()
        for p, e in ready:
            del self._u[p]
            old = self._shipped.get(p)
            fresh = e.fresh or (old is not None and old.fresh)
            content = e.is_dir and (e.fresh or (old is not None and old.content_fresh))
            self._shipped[p] = Shipped(e.is_dir, fresh, NEVER, content)
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
            moved = self._u[dst] = Entry(is_dir, False, True, False, now, now)
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



def _chunks(segments: list[Segment], ready: list[tuple[bytes, Entry]], max_batch: int) -> list[ChangeSet]:
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
