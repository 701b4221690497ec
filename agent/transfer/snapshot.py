"""A snapshot job at the destination (zc-ctl snapshot): around the ordinary transfer into the snapshot's hidden
in-progress directory, clean up what interrupted runs left, choose the link base, mark the snapshot complete
by renaming it to its name once the transfer is done, then prune by the retention counts.

Everything goes through the snapshots directory's fd, opened through the export's SafeRoot (no path escapes,
no symlink followed), and names in it are checked as snapshot names (zcrepl.core.snapshots).

Still being written is told by a lock, not by a guess: the run writing ``.NAME.in-progress`` holds an exclusive
``flock`` on that directory for as long as its transfer lasts, and a later run removes a leftover only once it
holds that lock itself. A killed agent's locks go with its process, so what it left is cleaned up by the next
run; a run that finds its own directory locked (a cleanup under way) fails its attempt, to be retried.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
from dataclasses import replace

from zcrepl.agent.transfer.atomic import remove_entry
from zcrepl.agent.transfer.jobdirs import ExtraDirs
from zcrepl.agent.transfer.saferoot import SafeRoot
from zcrepl.core.errors import InvalidPath, TransferError, UnsafePath
from zcrepl.core.logs import kv
from zcrepl.core.snapshots import in_progress, leftover, newest, parse_name, pruning, retain
from zcrepl.core.types import Durability, JobOptions

log = logging.getLogger(__name__)

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class SnapshotBusy(TransferError):
    """Another run holds this snapshot's in-progress directory (cleaning it up): the next attempt starts anew."""

    retryable = True


def job_rel(rel: tuple[bytes, ...], options: JobOptions) -> tuple[bytes, ...]:
    """The job's root below the export: for a snapshot, its in-progress directory in the snapshots directory
    ``rel`` (the job's destination); else ``rel`` itself."""
    return (*rel, in_progress(options.snapshot_name)) if options.snapshot_name else rel


class Snapshot:
    """One snapshot run's hold on its snapshots directory, from the start of its transfer to ``close``."""

    def __init__(self, export: SafeRoot, rel: tuple[bytes, ...], options: JobOptions, label: str) -> None:
        """``rel`` is the job's root (``job_rel``); ``label`` names the snapshots directory in messages."""
        self.options = options
        self.name = options.snapshot_name.encode()
        self.own = rel[-1]
        self.label = label
        self.export = export
        self.dir_rel = rel[:-1]
        self.base: str | None = None  # the newest complete snapshot: the link base
        try:
            self.dfd = export.open_dir(self.dir_rel, create=True, mode=0o755)
        except (NotADirectoryError, UnsafePath) as err:
            raise InvalidPath(f"{label} is not a directory (or passes through a symlink); name the real "
                              "directory snapshots are kept in") from err
        self.lock = -1
        try:
            self._clean_up()
            self._hold_own()
            self.base = newest([n.decode() for n in self._complete()], upto=options.snapshot_name)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for fd in (self.lock, self.dfd):
            if fd >= 0:
                os.close(fd)
        self.lock = self.dfd = -1

    def dirs(self, dirs: ExtraDirs) -> ExtraDirs:
        """The job's --link-dest directories with the newest complete snapshot first."""
        if self.base is None:
            return dirs
        return replace(dirs, link_dest=((self.export, (*self.dir_rel, self.base.encode())), *dirs.link_dest))

    def complete(self) -> int:
        """The transfer is done: the snapshot takes its name, then the old ones go by the retention counts; how
        many went.

        A snapshot of that name already there was completed by an earlier attempt of this job whose report was
        lost (or by a job of the same second): this newer copy replaces it, the old one going the way of a
        pruned snapshot, so the name never stands for a half-removed tree."""
        if not _absent(self.dfd, self.name):
            old = pruning(self.name)
            remove_entry(self.dfd, old)
            os.rename(self.name, old, src_dir_fd=self.dfd, dst_dir_fd=self.dfd)
            os.rename(self.own, self.name, src_dir_fd=self.dfd, dst_dir_fd=self.dfd)
            remove_entry(self.dfd, old)
        else:
            os.rename(self.own, self.name, src_dir_fd=self.dfd, dst_dir_fd=self.dfd)
        if self.options.durability is not Durability.NONE:
            os.fsync(self.dfd)
        log.info("snapshot complete", extra=kv(path=self.label, snapshot=self.name, base=self.base or ""))
        return self._prune()

    # -- internals ----------------------------------------------------------------------------------
    def _entries(self) -> list[bytes]:
        with os.scandir(self.dfd) as it:
            return [os.fsencode(de.name) for de in it if de.is_dir(follow_symlinks=False)]

    def _complete(self) -> list[bytes]:
        return [n for n in self._entries() if parse_name(n) is not None]

    def _clean_up(self) -> None:
        """Remove the in-progress and pruning directories no run holds (interrupted runs left them)."""
        for name in self._entries():
            if name == self.own or not leftover(name):
                continue
            fd = _try_lock(self.dfd, name)
            if fd is None:
                log.info("snapshot in progress left alone: another run holds it",
                         extra=kv(path=self.label, entry=name))
                continue
            try:
                removed = remove_entry(self.dfd, name)
            except OSError as err:
                log.warning("could not remove an interrupted snapshot", extra=kv(path=self.label, entry=name,
                                                                                   error=str(err)))
                continue
            finally:
                os.close(fd)
            log.info("interrupted snapshot removed", extra=kv(path=self.label, entry=name, entries=removed))

    def _hold_own(self) -> None:
        for _ in range(3):  # a cleanup may remove it between our open and our lock: then make it again
            with contextlib.suppress(FileExistsError):
                os.mkdir(self.own, 0o700, dir_fd=self.dfd)
            fd = _try_lock(self.dfd, self.own)
            if fd is None:
                if _absent(self.dfd, self.own):
                    continue
                raise SnapshotBusy(f"{self.label}/{self.own.decode()} is held by another run (cleaning it up); "
                                   "the next attempt starts this snapshot anew")
            if os.fstat(fd).st_nlink > 0:
                self.lock = fd
                return
            os.close(fd)
        raise SnapshotBusy(f"{self.label}/{self.own.decode()} kept being removed by another run; the next "
                           "attempt tries again")

    def _prune(self) -> int:
        names = self._complete()
        keep = retain([n.decode() for n in names], self.options.keep_daily, self.options.keep_weekly,
                      self.options.keep_monthly)
        gone = 0
        for name in sorted(names):
            if name.decode() in keep:
                continue
            hidden = pruning(name)
            try:  # hidden first: a half-removed snapshot must never look complete
                os.rename(name, hidden, src_dir_fd=self.dfd, dst_dir_fd=self.dfd)
                remove_entry(self.dfd, hidden)
            except OSError as err:
                log.warning("could not prune a snapshot; the next run tries again",
                            extra=kv(path=self.label, snapshot=name, error=str(err)))
                continue
            gone += 1
            log.info("snapshot pruned", extra=kv(path=self.label, snapshot=name))
        return gone


def _try_lock(dfd: int, name: bytes) -> int | None:
    """An fd of directory ``name`` holding its exclusive lock, or None when another holds it (or it is no
    longer a directory)."""
    try:
        fd = os.open(name, _DIR, dir_fd=dfd)
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return None
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    if not stat.S_ISDIR(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def _absent(dfd: int, name: bytes) -> bool:
    try:
        os.lstat(name, dir_fd=dfd)
    except FileNotFoundError:
        return True
    return False


class NoSnapshot:
    """What an ordinary job has instead: nothing to add, nothing to mark."""

    def dirs(self, dirs: ExtraDirs) -> ExtraDirs:
        return dirs

    def complete(self) -> int:
        return 0

    def close(self) -> None:
        pass


def begin_snapshot(export: SafeRoot, rel: tuple[bytes, ...], options: JobOptions,
                   label: str) -> Snapshot | NoSnapshot:
    """Take hold of the snapshot when the job is one (``close`` lets go); ``label`` is the job's destination."""
    return Snapshot(export, rel, options, label) if options.snapshot_name else NoSnapshot()


__all__ = ["NoSnapshot", "Snapshot", "SnapshotBusy", "begin_snapshot", "job_rel"]
