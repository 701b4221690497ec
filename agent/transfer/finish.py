"""The end of a transfer at the destination: delete what the source lacks, make hard links, and set
directory metadata children-first (creating entries changes a directory's mtime).

Deleting follows rsync's ``--delete``: what the job's filters exclude (``TreeWriter.protect``) stays, even
inside a directory the source lacks (that directory then stays too, holding only what is protected, as
rsync's "cannot delete non-empty directory" leaves it); ``--delete-excluded`` protects nothing.
"""

from __future__ import annotations

import logging
import os
import stat
from typing import TYPE_CHECKING

from zcrepl.agent.transfer.atomic import _open_subdir, set_dir_meta
from zcrepl.agent.transfer.meta import apply_meta
from zcrepl.agent.transfer.saferoot import TEMP_PREFIX, lstat_at, temp_name, validate_relpath
from zcrepl.core.errors import UnsafePath
from zcrepl.core.logs import kv

if TYPE_CHECKING:
    from zcrepl.agent.transfer.apply import TreeWriter

log = logging.getLogger(__name__)
_PROTECT_DEPTH = 256  # directory levels a filtered delete descends; deeper ones are kept whole (nothing lost)


def delete_extras(w: TreeWriter) -> None:
    """Remove what the source lacks, only inside directories this manifest listed (read back one at a time)."""
    for dpath, names in w.listing.directories():
        try:
            dfd = w.root.open_dir(validate_relpath(dpath))
        except (OSError, UnsafePath) as err:
            w.entry_failed(dpath, err)
            continue
        try:
            with os.scandir(dfd) as it:
                extras = [os.fsencode(de.name) for de in it]
            for name in extras:
                if name.startswith(TEMP_PREFIX):
                    _drop_stale_temp(dfd, name)
                elif name not in names:
                    rel = (dpath + b"/" if dpath else b"") + name
                    try:
                        if w.protect:
                            _remove_unprotected(w, dfd, name, rel, 0)
                        else:
                            w.count(deleted=w.remove(dfd, name, rel))
                    except OSError as err:
                        w.entry_failed(rel, err)
        finally:
            os.close(dfd)


def _remove_unprotected(w: TreeWriter, dfd: int, name: bytes, rel: bytes, depth: int) -> bool:
    """Remove ``name`` (path ``rel``) unless the filters protect it; a directory goes with everything below
    it that they don't protect, and stays when something in it is. True when it is gone."""
    st = lstat_at(dfd, name)
    if st is None:
        return True
    is_dir = stat.S_ISDIR(st.st_mode)
    if w.protect.excluded(rel, is_dir):
        return False
    if not is_dir:
        w.count(deleted=w.remove(dfd, name, rel))
        return True
    if depth >= _PROTECT_DEPTH:
        log.warning("not deleted: too deep to check the filters below it",
                    extra=kv(job=w.job_id, path=rel, levels=depth))
        return False
    sub = _open_subdir(dfd, name)
    if sub is None:  # replaced by something else meanwhile
        return _remove_unprotected(w, dfd, name, rel, depth)
    kept = False
    try:
        with os.scandir(sub) as it:
            children = [os.fsencode(de.name) for de in it]
        for child in children:
            kept |= not _remove_unprotected(w, sub, child, rel + b"/" + child, depth + 1)
    finally:
        os.close(sub)
    if kept:
        log.info("directory kept: it holds entries the filters protect", extra=kv(job=w.job_id, path=rel))
        try:  # not a manifest directory: finish_dirs will not see what went from it
            w.dir_changed(validate_relpath(rel))
        except UnsafePath:
            pass  # a name we never write (our temp prefix): nothing of this job's is in it
        return False
    os.rmdir(name, dir_fd=dfd)
    w.count(deleted=1)
    return True


def _drop_stale_temp(dfd: int, name: bytes) -> None:
    """A ``.zc.*.tmp`` file here was left by a receiver that was killed mid-file: no session is writing into
    this directory now (overlapping destinations never run at once), so it goes. ``.zc.partial`` stays: it
    is the resume area."""
    if name.endswith(b".tmp"):
        try:
            os.unlink(name, dir_fd=dfd)
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            pass


def make_links(w: TreeWriter) -> None:
    """Hard links, once every file they point at is in place (rsync -H)."""
    for path, first in w.links:
        tpfd = pfd = -1
        try:
            tpfd, tleaf = w.root.open_parent(validate_relpath(first))
            pfd, leaf = w.root.open_parent(validate_relpath(path))
            target = os.lstat(tleaf, dir_fd=tpfd)
            if not stat.S_ISREG(target.st_mode):
                raise OSError(0, "the file it links to is missing")
            st = lstat_at(pfd, leaf)
            if st is not None and (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                w.count(skipped=1)
                continue
            if st is not None and stat.S_ISDIR(st.st_mode):
                w.clear_dir_for(pfd, leaf, "a hard link", path)
            elif st is not None and w.backup is not None:
                w.backup.keep(pfd, leaf, path)
            tmp = temp_name(leaf)
            os.link(tleaf, tmp, src_dir_fd=tpfd, dst_dir_fd=pfd, follow_symlinks=False)
            try:
                os.rename(tmp, leaf, src_dir_fd=pfd, dst_dir_fd=pfd)
            except BaseException:
                os.unlink(tmp, dir_fd=pfd)
                raise
            w.count(files_done=1)
        except (OSError, UnsafePath) as err:
            w.entry_failed(path, err)
        finally:
            for fd in (tpfd, pfd):
                if fd >= 0:
                    os.close(fd)


def finish_dirs(w: TreeWriter) -> None:
    """Directory modes and mtimes, children before parents (creating files changes a dir's mtime).

    Under ``job`` durability a directory goes to the flush when its ctime says it changed since the job
    started (an entry added, renamed or removed, by this job's code paths whichever they were) or when its
    metadata is set now; an untouched directory costs one fstat.
    """
    for e in reversed(w.dirs):
        try:
            dfd = w.root.open_dir(validate_relpath(e.path))
        except (OSError, UnsafePath) as err:
            w.entry_failed(e.path, err)
            continue
        try:
            apply_meta(dfd, e, policy=w.policy, as_root=w.as_root, xattrs=w.options.xattrs)
            st = os.fstat(dfd)
            changed = w.flush is not None and w.flush.changed_since_start(st)
            if stat.S_IMODE(st.st_mode) != e.mode & 0o777 or st.st_mtime_ns != e.mtime_ns:
                set_dir_meta(dfd, e.mode, e.mtime_ns)
                changed = True
            if w.fsync_files:
                os.fsync(dfd)  # its new entries (mkdir, renames) are durable too
            elif changed and w.flush is not None:
                w.flush.dir_changed(dfd)
                dfd = -1  # the flush owns it now
        except OSError as err:  # e.g. an attribute this filesystem refuses: this entry failed, as for a file
            w.entry_failed(e.path, err)
        finally:
            if dfd >= 0:
                os.close(dfd)
