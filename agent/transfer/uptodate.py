"""The "already there" path of a receiver: a destination file that matches the entry by size and mtime (or
content, with --checksum) is kept, and drifted metadata fixed.

The fix is made in place only when the file has no other name. One with several links (``st_nlink > 1``)
may share its inode with a file outside the export (or outside the job), so it is replaced by a local copy
(temp + rename) and its other names keep the old inode untouched: nothing outside can be altered through a
hard link (issue 9, finding 9).
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

from zcrepl.agent.transfer.atomic import AtomicFile
from zcrepl.agent.transfer.entrycodec import Run
from zcrepl.agent.transfer.frame import F_UNREADABLE, Basis, Entry, Kind
from zcrepl.agent.transfer.kcopy import copy_range
from zcrepl.agent.transfer.meta import apply_meta, owner_ids, xattrs_match
from zcrepl.agent.transfer.saferoot import lstat_at
from zcrepl.agent.transfer.scan import file_digest
from zcrepl.core.errors import ProtocolError
from zcrepl.core.exportpolicy import KEEP

if TYPE_CHECKING:
    from zcrepl.agent.transfer.apply import TreeWriter


def admit_run(w: TreeWriter, run: Run) -> list[tuple[int, bool | Basis]]:
    """Take a run of one directory's entries (``entrycodec.Run``) in manifest order; (index, what ``admit`` said)
    for each entry whose content is needed.

    The run is checked as one (``Listing.admit_run``), and a file whose lstat matches its entry in type, mode,
    size, mtime (and owner, where the policy sets owners) is counted as skipped here, with one syscall and
    one tuple comparison: the common case of a re-sync. Anything else goes the per-entry way (``decide``).
    """
    entries, leaves = run.entries, run.leaves
    if w.options.dry_run:  # a dry run's checks are its own (plan.py)
        return _one_by_one(w, entries)
    out: list[tuple[int, bool | Basis]] = []
    if not w.n_entries:  # the root entry comes first, and alone
        out = _one_by_one(w, entries[:1])
        entries, leaves = entries[1:], leaves[1:]
        if not entries:
            return out
    start, dparts = _take(w, run.prefix, entries, leaves)
    quick = not (w.options.checksum or w.options.xattrs)
    owners = w.policy.owners and w.as_root
    probe = (*dparts, b"")
    pfd = -1
    skipped = 0
    for i, e in enumerate(entries):
        if quick and e.kind is Kind.FILE and not e.flags & F_UNREADABLE:
            try:
                if pfd < 0:
                    pfd = w.parent(probe)[0]
                st = os.lstat(leaves[i], dir_fd=pfd)
            except OSError:
                # decide() looks again, and reports what is wrong. A new directory's files are all missing:
                # the rest of the run skips this look, which would only fail the same way before decide's.
                st = None
                quick = False
            if (st is not None
                    and (st.st_mode, st.st_size, st.st_mtime_ns) == (stat.S_IFREG | e.mode & 0o777, e.size, e.mtime_ns)
                    and (not owners or owner_ids(w.policy, e, st, w.as_root) == (KEEP, KEEP))):
                skipped += 1
                continue
        wanted = w.decide(start + i, (*dparts, leaves[i]), e)
        pfd = -1  # decide() may have opened other directories: the cached fd may be closed
        if wanted:
            out.append((start + i, wanted))
    if skipped:
        w.count(skipped=skipped)
    return out


def _one_by_one(w: TreeWriter, entries: list[Entry]) -> list[tuple[int, bool | Basis]]:
    out: list[tuple[int, bool | Basis]] = []
    for e in entries:
        index = w.n_entries
        wanted = w.admit(e)
        if wanted:
            out.append((index, wanted))
    return out


def _take(w: TreeWriter, prefix: bytes, entries: list[Entry], leaves: list[bytes]) -> tuple[int, tuple[bytes, ...]]:
    """The run's checks (what ``admit`` checks of each entry); returns its first index and its directory."""
    start = w.n_entries
    w.check_count(start + len(entries))
    if w.manifest_done:
        raise ProtocolError("an entry after MANIFEST_END")
    if not prefix and b"" in leaves:
        raise ProtocolError("duplicate name in the manifest: the root")
    dparts = w.listing.admit_run(prefix, entries, leaves)
    with w._lock:
        w.n_entries += len(entries)
    return start, dparts


def up_to_date(w: TreeWriter, parts: tuple[bytes, ...], e: Entry) -> bool:
    """True when the destination already holds this file; fixes mode/mtime/owner drift.

    The fix is made in place only when the file has no other name: one with several links (st_nlink > 1)
    may share its inode with a file outside the export, so it is replaced by a copy (temp + rename)
    instead, and the other names keep the old inode untouched.
    """
    pfd, leaf = w.parent(parts)
    st = lstat_at(pfd, leaf)
    if st is None or not stat.S_ISREG(st.st_mode) or st.st_size != e.size:
        return False
    if not w.options.checksum and st.st_mtime_ns != e.mtime_ns:
        return False
    meta_ok = (stat.S_IMODE(st.st_mode) == e.mode & 0o777
               and owner_ids(w.policy, e, st, w.as_root) == (KEEP, KEEP))
    if not w.options.checksum and meta_ok and not w.options.xattrs:
        return True
    fd = os.open(leaf, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=pfd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != e.size:
            return False
        if w.options.checksum and file_digest(fd, w.buf()) != e.digest:
            return False
        if st.st_nlink > 1:
            if not (meta_ok and st.st_mtime_ns == e.mtime_ns
                    and (not w.options.xattrs or xattrs_match(fd, e, w.policy))):
                _replace_linked(w, pfd, leaf, fd, e)
            return True
        w.note_write()
        if stat.S_IMODE(st.st_mode) != e.mode & 0o777:
            os.fchmod(fd, e.mode & 0o777)
        apply_meta(fd, e, st, policy=w.policy, as_root=w.as_root, xattrs=w.options.xattrs)
        if st.st_mtime_ns != e.mtime_ns:
            os.utime(fd, ns=(st.st_atime_ns, e.mtime_ns))
        if not (meta_ok and st.st_mtime_ns == e.mtime_ns) or w.options.xattrs:
            w.file_changed(parts)
    finally:
        os.close(fd)
    return True

def _replace_linked(w: TreeWriter, pfd: int, leaf: bytes, fd: int, e: Entry) -> None:
    """A fresh copy of a multiply-linked file, with this entry's metadata, renamed over ``leaf``."""
    w.check_space(e.size)
    with AtomicFile(pfd, leaf, e.size) as tmp:
        if copy_range(fd, tmp.fd, 0, e.size, []) != e.size:
            raise OSError(0, "the file changed while it was copied to break its hard link")
        apply_meta(tmp.fd, e, policy=w.policy, as_root=w.as_root, xattrs=w.options.xattrs)
        tmp.commit(e.mode, e.mtime_ns, fsync=w.fsync_files, flush=w.flush, size=e.size)
    w.note_write()
