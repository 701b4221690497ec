"""The destination side of a transfer, independent of where bytes come from.

``TreeWriter`` admits manifest entries (validating every name: reject, never normalise; a parent must
be a directory this manifest announced), applies directories and symlinks, decides which files are
needed, hands out ``FileSlot``s that ranges of a file are written into (from any number of
connections or a local copy), commits each file atomically once every byte arrived, and finishes
(deletes extras, sets directory metadata children-first, applies the durability policy).
All filesystem access goes through fds confined to the destination root.
"""

from __future__ import annotations

import errno
import logging
import os
import threading

from zcrepl.agent.transfer import frame as fr
from zcrepl.agent.transfer.apply_nodes import apply_symlink, ensure_dir
from zcrepl.agent.transfer.atomic import PREALLOCATE_MIN, remove_entry
from zcrepl.agent.transfer.backup import Backup
from zcrepl.agent.transfer.basis import find_basis
from zcrepl.agent.transfer.dircache import DirCache
from zcrepl.agent.transfer.fileslot import FileSlot, open_slot, release_parent
from zcrepl.agent.transfer.finish import delete_extras, finish_dirs, make_links
from zcrepl.agent.transfer.flush import JobFlush
from zcrepl.agent.transfer.frame import Basis, Entry, FileHead, Kind, Result
from zcrepl.agent.transfer.kcopy import copy_range
from zcrepl.agent.transfer.limits import LimitExceeded, SessionLimits
from zcrepl.agent.transfer.linkdest import LinkDest
from zcrepl.agent.transfer.listing import Listing
from zcrepl.agent.transfer.meta import apply_meta
from zcrepl.agent.transfer.partial import RESUME_MIN, Partial, PartialArea
from zcrepl.agent.transfer.saferoot import SafeRoot, validate_relpath
from zcrepl.agent.transfer.scan import file_digest, tree_filter
from zcrepl.agent.transfer.uptodate import up_to_date
from zcrepl.core.errors import NoSpace, ProtocolError, UnsafePath
from zcrepl.core.exportpolicy import DEFAULT_POLICY, ExportPolicy
from zcrepl.core.filters import Filter
from zcrepl.core.logs import kv
from zcrepl.core.paths import show
from zcrepl.core.types import Durability, JobOptions, TransferStats

log = logging.getLogger(__name__)
MADE_KEEP = 256


class TreeWriter:
    def __init__(self, root: SafeRoot, options: JobOptions, label: str, job_id: int, *,
                 policy: ExportPolicy = DEFAULT_POLICY, limits: SessionLimits | None = None) -> None:
        self.root = root
        self.options = options
        self.label = label
        self.job_id = job_id
        self.policy = policy  # what the peer may decide here: ownership, privileged xattrs
        self.limits = limits or SessionLimits()
        self.space_lock = threading.Lock()  # one free-space check and preallocation at a time
        # Held per directory, not per entry: see listing.py; a needed file's entry until its content arrived
        # (the sender's window bounds how many are asked for at once).
        self.n_entries = 0
        self.dirs: list[Entry] = []  # in manifest order: their metadata is set at the end, children first
        # Names per directory, one directory at a time (listing.py); made at the first entry, when a watch
        # session has said so (``restricted``).
        self.listing = Listing(keep_names=False)
        self.needed: dict[int, Entry] = {}  # asked for, no byte arrived yet
        self.slots: dict[int, FileSlot] = {}  # partly arrived
        self.manifest_done = False
        self.fsync_files = options.durability is Durability.FILE
        # ``job``: what this job wrote is flushed in the background and waited for in finish()
        self.flush = JobFlush(root.fd) if options.durability is Durability.JOB else None
        self.bases: dict[int, Basis] = {}
        self.partials: dict[int, Partial] = {}
        self.digests: dict[int, bytes] = {}
        self.area = PartialArea(root)
        self.keep_partials = True
        self.saved_partials: list[bytes] = []  # relpaths whose data went to the partial area
        self.links: list[tuple[bytes, bytes]] = []  # (name, first name), made at the end
        self.as_root = os.geteuid() == 0  # ownership is set only when we may (and the policy allows)
        self._dirs: dict[tuple[bytes, ...], int] = {}  # batch cache of parent directory fds
        self.data_dirs = DirCache(root)  # the data connections' parent directory fds (see dircache.py)
        # Directories this transfer just made (the last MADE_KEEP): empty, so a file entry in one is needed
        # without looking at the destination.
        self._made: dict[tuple[bytes, ...], None] = {}
        self._wrote = False  # anything changed at the destination besides files and deletions
        self._lock = threading.Lock()
        # A slot's first range creates its temp file; later ranges (other connections) wait for that. One
        # condition for all slots: such waits are rare, an Event per file is not free.
        self._opened = threading.Condition(self._lock)
        self._hashbuf: bytearray | None = None
        self.files_done = self.bytes_done = self.skipped = self.deleted = self.errors = 0
        self.renamed = 0
        self.first_error = ""
        self.no_space = False  # an entry failed because the filesystem was full (ENOSPC, EDQUOT)
        # A watch session: the manifest lists changed paths only (see transfer/changes.py), so nothing
        # unlisted is deleted, and what stands in an upserted path's way is replaced.
        self.restricted = False
        self.protect = Filter()  # what --delete keeps (set by finish)
        self.backup: Backup | None = None  # --backup-dir: where what this run replaces or deletes goes
        self.link_dest: LinkDest | None = None  # --link-dest: earlier copies unchanged files are linked from
        self.basis_roots: dict[int, SafeRoot] = {}  # a delta basis found in a --link-dest directory, by index

    # -- manifest -----------------------------------------------------------------------------------
    def admit(self, e: Entry) -> bool | Basis:
        """Take one entry in manifest order; True (or a Basis to send along) when its content is needed.

        Raises UnsafePath/ProtocolError for a malformed manifest (the caller drops the peer). Trouble
        with the destination itself (a full disk, a planted symlink) is recorded as an entry error.
        """
        index = self.n_entries
        self.check_count(index + 1)
        parts = self._check(index, e)
        with self._lock:
            self.n_entries += 1
        return self.decide(index, parts, e)

    def check_count(self, total: int) -> None:
        if total > self.limits.max_entries:
            raise LimitExceeded(f"the manifest sent to {self.label} has more than {self.limits.max_entries:,} "
                                "entries; raise max_manifest_entries in that agent's config if the tree is that big")

    def decide(self, index: int, parts: tuple[bytes, ...], e: Entry) -> bool | Basis:
        """What ``admit`` does with an entry once it passed the manifest's checks (``parts``: its components)."""
        if e.kind is Kind.HARDLINK and len(self.links) >= self.limits.max_hardlinks:
            raise LimitExceeded(f"the manifest sent to {self.label} has more than {self.limits.max_hardlinks:,} "
                                "hard links; raise max_hardlinks in that agent's config if the tree has that many")
        try:
            if e.kind is Kind.DIR:
                self.dirs.append(e)
                if parts:
                    ensure_dir(self, parts)
            elif e.flags & fr.F_UNREADABLE:
                pass  # the source could not read it: what stands here stays as it is
            elif e.kind is Kind.SYMLINK:
                apply_symlink(self, parts, e)
            elif e.kind is Kind.HARDLINK:
                self.links.append((e.path, e.target))  # the entry's own bytes: nothing new is held
            elif parts[:-1] not in self._made and up_to_date(self, parts, e):
                self.count(skipped=1)
            elif self.link_dest is not None and self.link_dest.link(self, parts, e):
                pass  # an unchanged copy in a --link-dest directory: linked, not sent
            else:
                basis = find_basis(self, index, parts, e)
                with self._lock:
                    self.needed[index] = e
                return basis or True
        except (OSError, UnsafePath) as err:
            self.entry_failed(e.path, err)
        return False

    def end_manifest(self, count: int) -> None:
        if count != self.n_entries:
            raise ProtocolError(f"MANIFEST_END says {count} entries, {self.n_entries} arrived")
        self.manifest_done = True

    def _check(self, index: int, e: Entry) -> tuple[bytes, ...]:
        if self.manifest_done:
            raise ProtocolError("an entry after MANIFEST_END")
        if index == 0:
            if e.kind is not Kind.DIR or e.path != b"":
                raise ProtocolError("the manifest must start with the root directory")
            self.listing = Listing(keep_names=self.options.delete and not self.restricted,
                                   contiguous=not self.restricted)
            return ()
        if not e.path:
            raise ProtocolError(f"duplicate name in the manifest: {show(e.path)}")
        return self.listing.admit(e)

    def parent(self, parts: tuple[bytes, ...]) -> tuple[int, bytes]:
        """Borrowed fd of the parent directory (opened confined, kept for the rest of the batch).

        Entries arrive grouped by directory, so one openat2 serves a whole directory's entries. The
        cache is emptied after every batch (``end_batch``) so a held fd never outlives a moment.
        """
        key = parts[:-1]
        fd = self._dirs.get(key)
        if fd is None:
            fd = self.root.open_dir(key)
            self._dirs[key] = fd
            if len(self._dirs) > 16:
                old = next(iter(self._dirs))
                os.close(self._dirs.pop(old))
        return fd, parts[-1]

    def made_dir(self, parts: tuple[bytes, ...]) -> None:
        """``ensure_dir`` created this directory: nothing of it needs a look before its files are written. Not
        in a watch session, whose ops may move entries into a directory made earlier in the session."""
        if self.restricted:
            return
        self._made[parts] = None
        if len(self._made) > MADE_KEEP:
            del self._made[next(iter(self._made))]

    def end_batch(self) -> None:
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()

    def remove(self, dfd: int, leaf: bytes, rel: bytes) -> int:
        """Delete ``leaf`` (path ``rel``): into the --backup-dir when there is one. How many entries went."""
        return remove_entry(dfd, leaf) if self.backup is None else self.backup.take(dfd, leaf, rel)

    def clear_dir_for(self, pfd: int, leaf: bytes, what: str, rel: bytes) -> None:
        if not self.options.delete and not self.restricted:
            try:
                os.rmdir(leaf, dir_fd=pfd)
                return
            except OSError as err:
                raise OSError(err.errno, f"a non-empty directory stands where the source has {what}; "
                                         "rerun with --delete to replace it") from err
        self.count(deleted=self.remove(pfd, leaf, rel))

    def buf(self) -> bytearray:
        if self._hashbuf is None:
            self._hashbuf = bytearray(1 << 20)
        return self._hashbuf

    # -- file data ----------------------------------------------------------------------------------
    def slot(self, head: FileHead) -> FileSlot:
        """The slot a range goes into; validates the range against what was asked and what arrived."""
        with self._lock:
            s = self.slots.get(head.index)
            if s is None:
                entry = self.needed.get(head.index)
                if entry is None:
                    raise ProtocolError(f"FILE for index {head.index}, which was not asked for")
                if head.total != entry.size:  # what we preallocate and wait for is what the manifest said
                    raise ProtocolError(f"FILE for {show(entry.path)} announces {head.total} bytes, its manifest "
                                        f"entry {entry.size}: the source is broken or hostile")
                del self.needed[head.index]
                s = FileSlot(head.index, entry, head.total, head.mode, head.mtime_ns, None)
                s.basis = self.bases.get(head.index)
                self.slots[head.index] = s
                opening = True
            else:
                if (head.total, head.mode, head.mtime_ns) != (s.total, s.mode, s.mtime_ns):
                    raise ProtocolError(f"FILE ranges of index {head.index} disagree on size, mode or mtime")
                opening = False
            for off, length in s.ranges:
                if head.offset < off + length and off < head.offset + head.length:
                    raise ProtocolError(f"FILE range {head.offset}+{head.length} of index {head.index} "
                                        "overlaps one already sent")
            s.ranges.append((head.offset, head.length))
            s.active += 1
            if not opening:
                while s.opening:  # another connection is creating the temp file for this index
                    self._opened.wait()
        if opening:
            try:
                open_slot(self, s)
            finally:
                with self._lock:
                    s.opening = False
                    self._opened.notify_all()
        return s

    def range_done(self, s: FileSlot, length: int, ok: bool, offset: int = -1) -> None:
        """Account one range; the last one commits (or discards) the file."""
        with self._lock:
            s.active -= 1
            s.got += length
            s.changed |= not ok
            if ok and offset >= 0:
                s.done.append((offset, length))
            complete = s.active == 0 and (s.got == s.total or s.failed)
            if complete:
                self.slots.pop(s.index, None)
        if complete:
            self._complete(s)

    def range_broken(self, s: FileSlot, offset: int = -1, written: int = 0) -> None:
        """A connection died inside a range: the file can never complete in this attempt.

        The temp file is discarded (or kept for a resume) by whichever range of it finishes last, never
        under another writer.
        """
        with self._lock:
            s.active -= 1
            s.failed = True
            s.keep_partial = True
            if offset >= 0 and written > 0:
                s.done.append((offset, written))
            self.slots.pop(s.index, None)
            last = s.active == 0
        if last:
            self._discard(s)

    def reuse(self, s: FileSlot, head: FileHead) -> None:
        """Fill a range from this file's basis: the old version (delta) or the partial (resume)."""
        if s.fd is None or s.basis is None:
            if s.basis is None:
                raise ProtocolError(f"REUSE for index {head.index}, which has no basis here")
            return
        if s.basis.kind == fr.BasisKind.PARTIAL:
            end = head.offset + head.length
            if not any(o <= head.offset and end <= o + n for o, n in s.basis.intervals):
                raise ProtocolError(f"REUSE of {head.offset}+{head.length} outside the partial data we hold")
            return  # those bytes are already in the temp file
        with self._lock:
            if s.basis_fd < 0:
                src = self.basis_roots.get(s.index, self.root)  # the file's old version, or a --link-dest copy
                s.basis_fd = src.open_read(validate_relpath(s.entry.path))
        if copy_range(s.basis_fd, s.fd, head.offset, head.length, []) != head.length:
            raise OSError(0, "the old version changed while it was reused")

    def set_digest(self, index: int, digest: bytes) -> None:
        with self._lock:
            if index not in self.needed and index not in self.slots:
                raise ProtocolError(f"DIGEST for index {index}, which was not asked for")
            self.digests[index] = digest

    def _complete(self, s: FileSlot) -> None:
        if s.failed or s.changed or s.tmp is None:
            self._discard(s)
            return  # a changed source is counted by the sender; a failed open was recorded already
        try:
            expected = self.digests.pop(s.index, b"") or (s.entry.digest if self.options.checksum else b"")
            if expected and file_digest(s.tmp.fd, self._local_buf()) != expected:
                raise OSError(0, "content hash of the assembled file differs from the source's")
            apply_meta(s.tmp.fd, s.entry, policy=self.policy, as_root=self.as_root, xattrs=self.options.xattrs)
            if self.backup is not None:
                self.backup.keep(s.pfd, s.leaf, s.entry.path)  # linked first: a reader sees old or new, never none
            try:
                s.tmp.commit(s.mode, s.mtime_ns, fsync=self.fsync_files, flush=self.flush, size=s.total)
            except IsADirectoryError:
                self.clear_dir_for(s.pfd, s.leaf, "a file", s.entry.path)
                s.tmp.commit(s.mode, s.mtime_ns, fsync=self.fsync_files, flush=self.flush, size=s.total)
        except OSError as err:
            self.entry_failed(s.entry.path, err)
        else:
            self.count(files_done=1, bytes_done=s.total)
        finally:
            self._discard(s)  # after a commit only the directory fd is left to close

    def _discard(self, s: FileSlot) -> None:
        if s.tmp is not None:
            if self.keep_partials and s.keep_partial and not s.changed and s.total >= RESUME_MIN and s.done:
                if self.area.save(s.entry.path, s.tmp, s.total, s.mtime_ns, s.done):
                    with self._lock:
                        self.saved_partials.append(s.entry.path)
            else:
                s.tmp.discard()
        release_parent(self, s)
        if s.basis_fd >= 0:
            os.close(s.basis_fd)
            s.basis_fd = -1

    def _local_buf(self) -> bytearray:
        return bytearray(1 << 20)  # completions may run on several connection threads at once

    def check_space(self, size: int) -> None:
        """Refuse a file whose preallocation would leave less than the free-space margin on the filesystem.

        Only files that are preallocated (``PREALLOCATE_MIN`` and up) are checked: a small file that doesn't
        fit fails on write with ENOSPC just as clearly, and nothing is reserved for it up front.
        """
        if size < PREALLOCATE_MIN:
            return
        vfs = os.statvfs(self.root.fd)
        free = vfs.f_bavail * vfs.f_frsize
        margin = self.limits.free_margin
        if size + margin > free:
            raise NoSpace(
                f"{self.label}: not enough space for a file of {size:,} bytes ({free:,} free, {margin:,} of them "
                "kept free by free_margin_bytes); free some space or choose another destination"
            )

    def abandon(self) -> None:
        """End of a failed attempt: discard every partly written file nobody is writing into; files
        still being written are discarded by their last writer (see range_done/range_broken)."""
        self.end_batch()
        self.data_dirs.close()
        self.listing.close()
        if self.flush is not None:
            self.flush.close()
        with self._lock:
            idle = [s for s in self.slots.values() if s.active == 0]
            for s in self.slots.values():
                s.failed = True
                s.keep_partial = True
            for s in idle:
                del self.slots[s.index]
        for s in idle:
            self._discard(s)

    # -- end of transfer ----------------------------------------------------------------------------
    def finish(self) -> Result:
        self.end_batch()
        self.data_dirs.close()
        if not self.manifest_done:
            raise ProtocolError("SENDER_DONE before MANIFEST_END")
        missing = len(self.needed) + len(self.slots)
        if missing:
            raise ProtocolError(f"the source finished without sending {missing} requested files")
        if self.options.delete and not self.restricted:
            # The destination's own .zcignore: the source's, as this transfer just replicated it.
            self.protect = Filter() if self.options.delete_excluded else tree_filter(
                self.root, self.options.filters, self.label)
            delete_extras(self)
        self.listing.close()
        make_links(self)
        self.area.remove_if_empty()  # before the root's mtime is set
        finish_dirs(self)
        if self.flush is not None:
            if self.backup is not None:
                self.backup.flush_into(self.flush)
            self.flush.wait(self.label, self.root)  # every file and directory this job changed, nothing else
        elif self.fsync_files:
            os.fsync(self.root.fd)
        return Result(files_done=self.files_done, bytes_done=self.bytes_done, files_skipped=self.skipped,
                      deleted=self.deleted, renamed=self.renamed, errors=self.errors, first_error=self.first_error)

    # -- accounting ---------------------------------------------------------------------------------
    def count(self, *, files_done: int = 0, bytes_done: int = 0, skipped: int = 0, deleted: int = 0) -> None:
        with self._lock:
            self.files_done += files_done
            self.bytes_done += bytes_done
            self.skipped += skipped
            self.deleted += deleted

    def entry_failed(self, path: bytes, err: BaseException) -> None:
        msg = f"{self.label}/{show(path)}: {getattr(err, 'strerror', None) or err}"
        with self._lock:
            self.errors += 1
            self.no_space = self.no_space or getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
            if not self.first_error:
                self.first_error = msg
        log.warning("entry failed", extra=kv(job=self.job_id, path=path, error=str(err)))

    def note_write(self) -> None:
        self._wrote = True

    def dir_changed(self, parts: tuple[bytes, ...]) -> None:
        """An entry of directory ``parts`` changed outside what finish_dirs sees (a watch session's ops)."""
        if self.flush is not None:
            self.flush.note(parts, is_dir=True)

    def file_changed(self, parts: tuple[bytes, ...]) -> None:
        """Metadata of the existing file ``parts`` was fixed in place."""
        if self.flush is not None:
            self.flush.note(parts, is_dir=False)

    def changed(self) -> bool:
        """Whether this transfer wrote anything (a no-change re-sync has nothing to make durable;
        metadata fixed in place and new directories count as writes)."""
        return bool(self.files_done or self.deleted or self.errors or self._wrote)

    def stats(self) -> TransferStats:
        return TransferStats(entries=self.n_entries, files_done=self.files_done, bytes_done=self.bytes_done,
                             files_skipped=self.skipped, deleted=self.deleted, errors=self.errors,
                             scan_done=self.manifest_done, backed_up=self.backup.kept if self.backup else 0,
                             linked=self.link_dest.linked if self.link_dest else 0)
