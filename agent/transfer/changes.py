"""Watch sessions on the data plane: ship one ``ChangeSet`` instead of a whole tree.

A watch session is an ordinary transfer (same connections, tickets, FILE ranges and atomic commits) that
starts with rounds of CHANGES frames on the control connection::

    S: CHANGES(renames, deletes)... CHANGES_END     R: applies them in order; MISSED(sources it lacked)... CHANGES_ACK
    S: CHANGES(deletes of paths the source no longer has)... CHANGES_END           R: MISSED... CHANGES_ACK
    S: ENTRIES ...  a manifest of the changed paths and their parent directories only

The receiver then never deletes what the manifest does not list (it is not the whole tree), and replaces
whatever stands in an upserted path's way, as the ``ChangeSet`` contract in ``zcrepl.agent.watch_coalesce``
requires. A rename whose source the destination lacks is answered with MISSED; the sender then sends the
rename's target in full (its subtree), or deletes it if the source has nothing there any more.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from zcrepl.agent.transfer import opsframe as opf
from zcrepl.agent.transfer.atomic import remove_entry
from zcrepl.agent.transfer.frame import F_UNREADABLE, Entry, Kind
from zcrepl.agent.transfer.saferoot import SafeRoot, lstat_at, temp_name, validate_relpath
from zcrepl.agent.transfer.scan import Scanner
from zcrepl.core.errors import ProtocolError, UnsafePath
from zcrepl.core.paths import show

if TYPE_CHECKING:
    from zcrepl.agent.transfer.apply import TreeWriter

__all__ = ["ChangePlan", "apply_ops", "restricted_manifest"]


@dataclass(frozen=True, slots=True)
class ChangePlan:
    """What one watch session ships: applied renames first, then deletes, then upserts (at ship time)."""

    renames: tuple[tuple[bytes, bytes], ...] = ()
    deletes: frozenset[bytes] = frozenset()
    upserts: frozenset[bytes] = frozenset()

    def ops(self) -> list[opf.Op]:
        out = [opf.Op(opf.OP_RENAME, a, b) for a, b in self.renames]
        out += [opf.Op(opf.OP_DELETE, p) for p in sorted(self.deletes)]
        return out


# -- sender ---------------------------------------------------------------------------------------------


def restricted_manifest(scanner: Scanner, paths: Iterable[bytes], subtrees: set[bytes]) -> tuple[list[Entry],
                                                                                               list[bytes]]:
    """Entries for ``paths`` as the source has them now, each preceded by its parent directories.

    A directory in ``subtrees`` is sent with everything below it. Returns (entries in manifest order,
    paths the source no longer has, to delete at the destination). Paths in our temp namespace never
    reach here (the watcher ignores them).
    """
    root = scanner.root
    entries = [scanner.root_entry()]
    emitted = {b""}
    not_dirs: set[bytes] = set()  # ancestors that are not (or no longer) directories
    gone: list[bytes] = []
    for path in sorted(set(paths)):
        if path in emitted:
            continue
        parts = tuple(path.split(b"/"))
        try:
            if not _ancestors(scanner, parts, entries, emitted, not_dirs):
                gone.append(path)
                continue
            e = _entry(scanner, root, parts, path)
        except _Unreadable as err:
            scanner.on_skip(path, f"a directory above it is not readable by zc-agent ({err}): the change is not "
                                  "replicated, and the destination keeps what it has there")
            continue  # neither shipped nor deleted
        if e is None:
            gone.append(path)
            continue
        entries.append(e)
        emitted.add(path)
        if e.kind is Kind.DIR and path in subtrees and not e.flags & F_UNREADABLE:
            for sub in scanner.below(parts):
                entries.append(sub)
                emitted.add(sub.path)
    return entries, gone


def _ancestors(scanner: Scanner, parts: tuple[bytes, ...], out: list[Entry], emitted: set[bytes],
               not_dirs: set[bytes]) -> bool:
    for i in range(1, len(parts)):
        anc = b"/".join(parts[:i])
        if anc in emitted:
            continue
        if anc in not_dirs:
            return False
        e = _entry(scanner, scanner.root, parts[:i], anc)
        if e is None or e.kind is not Kind.DIR:
            not_dirs.add(anc)
            return False
        out.append(e)
        emitted.add(anc)
    return True


class _Unreadable(Exception):
    """A changed path below a directory zc-agent may not read: it can be neither shipped nor deleted."""


def _entry(scanner: Scanner, root: SafeRoot, parts: tuple[bytes, ...], rel: bytes) -> Entry | None:
    try:
        pfd, leaf = root.open_parent(parts)
    except (FileNotFoundError, NotADirectoryError, UnsafePath):
        return None
    except PermissionError as err:
        raise _Unreadable(err.strerror) from err
    try:
        st = os.stat(leaf, dir_fd=pfd, follow_symlinks=False)
        return scanner.entry(pfd, parts[:-1], leaf, rel, st)
    except FileNotFoundError:
        return None
    finally:
        os.close(pfd)


# -- receiver -------------------------------------------------------------------------------------------


def apply_ops(w: TreeWriter, ops: list[opf.Op]) -> list[bytes]:
    """Apply renames and deletes in order at the destination; returns rename sources it did not have.

    Names are validated first (a bad one is a protocol error: the peer is dropped); trouble with the
    destination itself (a planted symlink, a full disk) is recorded as an entry error.
    """
    missed: list[bytes] = []
    for op in ops:
        src = validate_relpath(op.path)
        dst = validate_relpath(op.target) if op.kind == opf.OP_RENAME else ()
        if op.kind == opf.OP_RENAME and not dst:  # b"" is the root: valid as a path, never as a new name
            raise ProtocolError(f"a rename of {show(op.path)} onto the root")
        if dst and dst[: len(src)] == src:
            raise ProtocolError(f"a rename of {show(op.path)} into itself")
        try:
            if not dst:
                _delete(w, src)
            elif not _rename(w, src, dst):
                missed.append(op.target)
        except (OSError, UnsafePath) as err:
            w.entry_failed(op.path, err)
    return missed


def _delete(w: TreeWriter, parts: tuple[bytes, ...]) -> None:
    try:
        pfd, leaf = w.root.open_parent(parts)
    except (FileNotFoundError, NotADirectoryError):
        return  # already gone
    try:
        w.count(deleted=remove_entry(pfd, leaf))
        w.dir_changed(parts[:-1])
    finally:
        os.close(pfd)


def _rename(w: TreeWriter, src: tuple[bytes, ...], dst: tuple[bytes, ...]) -> bool:
    """False when the destination lacks the source (the sender then sends the target in full)."""
    try:
        spfd, sleaf = w.root.open_parent(src)
    except (FileNotFoundError, NotADirectoryError):
        return False
    try:
        if lstat_at(spfd, sleaf) is None:
            return False
        dpfd = make_parents(w, dst[:-1])
        try:
            if src[: len(dst)] == dst:
                _onto_ancestor(w, spfd, sleaf, dpfd, dst[-1])
            else:
                _replace(w, spfd, sleaf, dpfd, dst[-1])
            w.dir_changed(src[:-1])
            w.dir_changed(dst[:-1])
        finally:
            os.close(dpfd)
    finally:
        os.close(spfd)
    w.renamed += 1
    w.note_write()
    return True


def _replace(w: TreeWriter, spfd: int, sleaf: bytes, dpfd: int, leaf: bytes) -> None:
    try:
        os.rename(sleaf, leaf, src_dir_fd=spfd, dst_dir_fd=dpfd)
    except OSError as err:
        if err.errno not in (errno.EISDIR, errno.ENOTDIR, errno.ENOTEMPTY, errno.EEXIST):
            raise
        # Something of another kind (or a non-empty directory) is in the way: the source replaced it.
        w.count(deleted=remove_entry(dpfd, leaf))
        os.rename(sleaf, leaf, src_dir_fd=spfd, dst_dir_fd=dpfd)


def _onto_ancestor(w: TreeWriter, spfd: int, sleaf: bytes, dpfd: int, leaf: bytes) -> None:
    """``a/b -> a`` (``mv a/b x; mv x a`` coalesces to it): clearing ``a`` would remove the source with it,
    so the source first moves out from under ``a``, to a temp name beside it."""
    tmp = temp_name(leaf)
    os.rename(sleaf, tmp, src_dir_fd=spfd, dst_dir_fd=dpfd)
    try:
        _replace(w, dpfd, tmp, dpfd, leaf)
    except BaseException:
        with contextlib.suppress(OSError):
            os.rename(tmp, sleaf, src_dir_fd=dpfd, dst_dir_fd=spfd)  # back where it was, if that still exists
        raise


def make_parents(w: TreeWriter, parts: tuple[bytes, ...]) -> int:
    """fd of directory ``parts``, creating missing ones and replacing a non-directory in the way."""
    fd = os.dup(w.root.fd)
    try:
        for depth, name in enumerate(parts):
            st = lstat_at(fd, name)
            if st is not None and not stat.S_ISDIR(st.st_mode):
                w.count(deleted=remove_entry(fd, name))
                st = None
            if st is None:
                try:
                    os.mkdir(name, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
                w.dir_changed(parts[:depth])
            nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd
