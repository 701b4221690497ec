"""A dry run (rsync -n) at the destination: the receiver's own comparison of the manifest with its tree,
reporting what a real run would change and changing nothing.

``PlanWriter`` is a ``TreeWriter`` that takes the same manifest through the same validation (``_check``) and
the same rules (what counts as up to date, what --delete removes and what the filters protect), but instead
of writing it records one ``PlanItem`` per change and asks for no file content, so the source sends no byte.
Nothing at the destination is created, renamed, deleted or touched: no temp file, no partial area, no
directory (a job root that doesn't exist yet is planned as created whole), no mtime; files are only opened for
reading when --checksum compares their content.

The categories follow ``rsync -ani --delete``: an entry whose type changes is *created* (what stood there is
replaced without a line of its own, except a directory's contents, which are *deleted*), an existing one
that differs in size, mtime (content with --checksum), mode, link target or owner is *updated*, and what the
source lacks is *deleted* (a directory after its contents).
"""

from __future__ import annotations

import os
import stat

from zcrepl.agent.transfer import frame as fr
from zcrepl.agent.transfer.apply import TreeWriter
from zcrepl.agent.transfer.atomic import _open_subdir
from zcrepl.agent.transfer.frame import Entry, Kind, Result
from zcrepl.agent.transfer.limits import LimitExceeded, SessionLimits
from zcrepl.agent.transfer.meta import owner_ids
from zcrepl.agent.transfer.saferoot import TEMP_PREFIX, SafeRoot, lstat_at, validate_relpath
from zcrepl.agent.transfer.scan import file_digest, tree_filter
from zcrepl.core.errors import ProtocolError, UnsafePath
from zcrepl.core.exportpolicy import DEFAULT_POLICY, KEEP, ExportPolicy
from zcrepl.core.filters import Filter
from zcrepl.core.types import PLAN_LISTED, PLAN_LISTED_BYTES, JobOptions, PlanItem, TransferStats

_KIND = {Kind.FILE: "file", Kind.DIR: "dir", Kind.SYMLINK: "symlink", Kind.HARDLINK: "hardlink"}
_DEPTH = 256  # directory levels a planned deletion lists; deeper ones are counted as their top directory


def open_job_root(export: SafeRoot, rel: tuple[bytes, ...], options: JobOptions) -> tuple[SafeRoot, bool]:
    """The job's root at the destination, and whether it is missing (a dry run never creates it: everything
    below is then planned as created, against the export's root, which is never written)."""
    if not options.dry_run:
        return SafeRoot.from_fd(export.open_dir(rel, create=True, mode=0o755), export.path), False
    try:
        return SafeRoot.from_fd(export.open_dir(rel), export.path), False
    except FileNotFoundError:
        return SafeRoot.from_fd(os.dup(export.fd), export.path), True


def make_writer(root: SafeRoot, missing: bool, options: JobOptions, label: str, job_id: int, *,
                policy: ExportPolicy = DEFAULT_POLICY, limits: SessionLimits | None = None) -> TreeWriter:
    if options.dry_run:
        return PlanWriter(root, options, label, job_id, policy=policy, limits=limits, missing=missing)
    return TreeWriter(root, options, label, job_id, policy=policy, limits=limits)


class PlanWriter(TreeWriter):
    def __init__(self, root: SafeRoot, options: JobOptions, label: str, job_id: int, *,
                 policy: ExportPolicy = DEFAULT_POLICY, limits: SessionLimits | None = None,
                 missing: bool = False) -> None:
        super().__init__(root, options, label, job_id, policy=policy, limits=limits)
        self.keep_partials = False
        self.missing = missing  # the job's root doesn't exist: everything is created
        self.new_dirs: set[bytes] = set()  # directories the run would create (nothing below them exists)
        self.items: list[PlanItem] = []  # the first PLAN_LISTED changes
        self._held = 0  # bytes of paths in ``items``
        self.created = self.updated = self.planned_deleted = self.send_files = self.send_bytes = 0

    # -- manifest -----------------------------------------------------------------------------------
    def admit(self, e: Entry) -> bool:
        index = self.n_entries
        if index >= self.limits.max_entries:
            raise LimitExceeded(f"the manifest sent to {self.label} has more than {self.limits.max_entries:,} "
                                "entries; raise max_manifest_entries in that agent's config if the tree is that big")
        parts = self._check(index, e)
        with self._lock:
            self.n_entries += 1
        if e.flags & fr.F_UNREADABLE:
            return False  # the source could not read it: what stands here stays as it is
        try:
            self._plan(parts, e)
        except (OSError, UnsafePath) as err:
            self.entry_failed(e.path, err)
        return False  # nothing is sent in a dry run

    def _plan(self, parts: tuple[bytes, ...], e: Entry) -> None:
        st = self._existing(parts, e)
        kind = _KIND[e.kind]
        if st is None:
            if e.kind is Kind.DIR:
                self.new_dirs.add(e.path)
            size = e.size if e.kind is Kind.FILE else 0
            self._add(PlanItem(e.path, "created", kind, (), size, e.target if e.kind is Kind.SYMLINK else b""))
            return
        why, size = self._file_why(parts, e, st) if e.kind is Kind.FILE else (self._other_why(parts, e, st), 0)
        if e.kind in (Kind.FILE, Kind.DIR) and stat.S_IMODE(st.st_mode) & 0o777 != e.mode & 0o777:
            why.append("mode")
        if e.kind is not Kind.HARDLINK and owner_ids(self.policy, e, st, self.as_root) != (KEEP, KEEP):
            why.append("owner")
        if why:
            self._add(PlanItem(e.path, "updated", kind, tuple(why), size,
                               e.target if e.kind is Kind.SYMLINK and "target" in why else b""))

    def _existing(self, parts: tuple[bytes, ...], e: Entry) -> os.stat_result | None:
        """What is at the entry's place now, or None when it would be created (absent, or of another type)."""
        parent = e.path.rpartition(b"/")[0]
        if self.missing or (parts and parent in self.new_dirs):
            return None
        st: os.stat_result | None
        if not parts:
            st = os.fstat(self.root.fd)
        else:
            pfd, leaf = self.parent(parts)
            st = lstat_at(pfd, leaf)
        if st is not None and _type(st) != _want(e.kind):
            if stat.S_ISDIR(st.st_mode) and (self.options.delete or self.restricted):
                self._list_deleted(parts, e.path, Filter(), top=False)  # rsync lists its contents, not it
            return None
        return st

    def _file_why(self, parts: tuple[bytes, ...], e: Entry, st: os.stat_result) -> tuple[list[str], int]:
        """Why a regular file would be updated, and the bytes that would be sent for it."""
        why: list[str] = []
        if st.st_size != e.size:
            why.append("size")
        elif self.options.checksum and _digest(self, parts, e) != e.digest:
            why.append("content")
        if st.st_mtime_ns != e.mtime_ns:
            why.append("mtime")
        if "size" in why or "content" in why or (why and not self.options.checksum):
            return why, e.size  # the quick check failed: the content is sent (or its delta)
        return why, 0

    def _other_why(self, parts: tuple[bytes, ...], e: Entry, st: os.stat_result) -> list[str]:
        """Why a symlink, hard link or directory would be updated (metadata aside)."""
        why: list[str] = []
        if e.kind is Kind.SYMLINK:
            pfd, leaf = self.parent(parts)
            if os.readlink(leaf, dir_fd=pfd) != e.target:
                why.append("target")
            if st.st_mtime_ns != e.mtime_ns:
                why.append("mtime")
        elif e.kind is Kind.HARDLINK:
            if not self._same_inode(st, e.target):
                why.append("link")
        elif st.st_mtime_ns != e.mtime_ns:
            why.append("mtime")
        return why

    def _same_inode(self, st: os.stat_result, first: bytes) -> bool:
        try:
            tpfd, tleaf = self.root.open_parent(validate_relpath(first))
        except (OSError, UnsafePath):
            return False
        try:
            t = lstat_at(tpfd, tleaf)
        finally:
            os.close(tpfd)
        return t is not None and (t.st_dev, t.st_ino) == (st.st_dev, st.st_ino)

    def _add(self, item: PlanItem) -> None:
        with self._lock:
            if item.change == "created":
                self.created += 1
            elif item.change == "updated":
                self.updated += 1
            else:
                self.planned_deleted += 1
            if item.size or (item.change == "created" and item.kind == "file"):
                self.send_files += 1
                self.send_bytes += item.size
            if len(self.items) < PLAN_LISTED and self._held + len(item.path) + len(item.target) <= PLAN_LISTED_BYTES:
                self.items.append(item)
                self._held += len(item.path) + len(item.target)

    # -- end of transfer ----------------------------------------------------------------------------
    def finish(self) -> Result:
        self.end_batch()
        if not self.manifest_done:
            raise ProtocolError("SENDER_DONE before MANIFEST_END")
        if self.options.delete and not self.restricted and not self.missing:
            protect = Filter() if self.options.delete_excluded else tree_filter(
                self.root, self.options.filters, self.label)
            for dpath, names in self.listing.directories():
                if dpath not in self.new_dirs:
                    self._extras(dpath, names, protect)
        self.listing.close()
        return Result(errors=self.errors, first_error=self.first_error)

    def _extras(self, dpath: bytes, listed: set[bytes], protect: Filter) -> None:
        try:
            dfd = self.root.open_dir(validate_relpath(dpath))
        except (OSError, UnsafePath) as err:
            self.entry_failed(dpath, err)
            return
        try:
            with os.scandir(dfd) as it:
                names = sorted(os.fsencode(de.name) for de in it)
            for name in names:
                if name.startswith(TEMP_PREFIX) or name in listed:
                    continue
                self._gone(dfd, name, (dpath + b"/" if dpath else b"") + name, protect, 0)
        finally:
            os.close(dfd)

    def _list_deleted(self, parts: tuple[bytes, ...], rel: bytes, protect: Filter, *, top: bool) -> None:
        """List what deleting directory ``rel`` removes (``top``: the directory itself too)."""
        dfd = self.root.open_dir(parts)
        try:
            with os.scandir(dfd) as it:
                names = sorted(os.fsencode(de.name) for de in it)
            for name in names:
                if not name.startswith(TEMP_PREFIX):
                    self._gone(dfd, name, rel + b"/" + name, protect, 1)
        finally:
            os.close(dfd)
        if top:
            self._add(PlanItem(rel, "deleted", "dir"))

    def _gone(self, dfd: int, name: bytes, rel: bytes, protect: Filter, depth: int) -> bool:
        """Plan the removal of ``name`` as finish.delete_extras would do it; True when it would be gone."""
        st = lstat_at(dfd, name)
        if st is None:
            return True
        is_dir = stat.S_ISDIR(st.st_mode)
        if protect and protect.excluded(rel, is_dir):
            return False
        if not is_dir:
            self._add(PlanItem(rel, "deleted", "symlink" if stat.S_ISLNK(st.st_mode) else "file"))
            return True
        kept = False
        sub = _open_subdir(dfd, name) if depth < _DEPTH else None
        if sub is not None:
            try:
                with os.scandir(sub) as it:
                    children = sorted(os.fsencode(de.name) for de in it)
                for child in children:
                    kept |= not self._gone(sub, child, rel + b"/" + child, protect, depth + 1)
            finally:
                os.close(sub)
        if not kept:
            self._add(PlanItem(rel, "deleted", "dir"))
        return not kept

    # -- accounting ---------------------------------------------------------------------------------
    def stats(self) -> TransferStats:
        return TransferStats(entries=self.n_entries, errors=self.errors, scan_done=self.manifest_done,
                             plan_created=self.created, plan_updated=self.updated, plan_deleted=self.planned_deleted,
                             plan_files=self.send_files, plan_bytes=self.send_bytes)

    def changed(self) -> bool:
        return False


def _digest(w: TreeWriter, parts: tuple[bytes, ...], e: Entry) -> bytes:
    pfd, leaf = w.parent(parts)
    fd = os.open(leaf, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=pfd)
    try:
        return file_digest(fd, w.buf())
    finally:
        os.close(fd)


def _type(st: os.stat_result) -> str:
    return "dir" if stat.S_ISDIR(st.st_mode) else "symlink" if stat.S_ISLNK(st.st_mode) else (
        "file" if stat.S_ISREG(st.st_mode) else "other")


def _want(kind: Kind) -> str:
    return "file" if kind is Kind.HARDLINK else _KIND[kind]
