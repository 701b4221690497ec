"""The directories a job reads from and writes to: checked before anything is read or written, and what to say
when the destination's filesystem is full."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from zcrepl.agent.transfer.apply import TreeWriter
from zcrepl.agent.transfer.backup import Backup, DirRefused, open_backup
from zcrepl.agent.transfer.linkdest import LinkDest
from zcrepl.agent.transfer.saferoot import SafeRoot
from zcrepl.core.errors import InvalidPath, UnsafePath
from zcrepl.core.logs import kv
from zcrepl.core.paths import show
from zcrepl.core.types import JobOptions

log = logging.getLogger(__name__)
Place = tuple[SafeRoot, tuple[bytes, ...]]  # an export root and components below it


@dataclass(frozen=True)
class ExtraDirs:
    """A job's --backup-dir and --link-dest directories, resolved through the destination's exports."""

    backup: Place | None = None
    link_dest: tuple[Place, ...] = ()


def resolve_dirs(resolve: Callable[[bytes], Place], o: JobOptions) -> ExtraDirs:
    """InvalidPath (naming the exports) for a directory outside them; a dry run uses none."""
    if o.dry_run:
        return ExtraDirs()
    return ExtraDirs(resolve(o.backup_dir) if o.backup_dir else None, tuple(resolve(d) for d in o.link_dest))


def attach_dirs(w: TreeWriter, dirs: ExtraDirs, label: str) -> None:
    """Open the backup directory (made when missing) and the link-dest directories (a missing one is skipped,
    as the first of a series of snapshots has none to link from) for ``w``; both must share its filesystem."""
    if dirs.backup is not None:
        w.backup = Backup(open_backup(*dirs.backup, w.root, label), fsync=w.fsync_files)
    roots: list[SafeRoot] = []
    try:
        for export, rel in dirs.link_dest:
            path = export.path + (b"/" + b"/".join(rel) if rel else b"")
            try:
                fd = export.open_dir(rel)
            except FileNotFoundError:
                log.info("--link-dest directory missing; not used", extra=kv(job=w.job_id, path=path))
                continue
            except (NotADirectoryError, UnsafePath) as err:
                raise DirRefused(f"--link-dest {show(path)} is not a directory (or passes through a symlink); "
                                 "name the real directory of an earlier copy") from err
            roots.append(SafeRoot.from_fd(fd, path))
            if os.fstat(fd).st_dev != os.fstat(w.root.fd).st_dev:
                raise DirRefused(f"--link-dest {show(path)} is on another filesystem than {label}; hard links "
                                 "can't cross filesystems: name an earlier copy on the destination's filesystem")
    except BaseException:
        for r in roots:
            r.close()
        raise
    if roots:
        w.link_dest = LinkDest(roots)


def detach_dirs(w: TreeWriter | None) -> None:
    if w is None:
        return
    if w.backup is not None:
        w.backup.close()
    if w.link_dest is not None:
        w.link_dest.close()


def open_source(root: SafeRoot, rel: tuple[bytes, ...], label: str) -> SafeRoot:
    try:
        fd = root.open_dir(rel)
    except FileNotFoundError as err:
        raise InvalidPath(f"{label} does not exist; check the path (zc-ctl agents lists the exports)") from err
    except NotADirectoryError as err:
        raise InvalidPath(f"{label} is not a directory; zcrepl replicates directory trees") from err
    except UnsafePath as err:
        raise InvalidPath(f"{label} passes through a symlink; name the real directory instead") from err
    except PermissionError as err:
        raise InvalidPath(f"{label}: permission denied; run zc-agent as a user that can read it") from err
    return SafeRoot.from_fd(fd, root.path + b"/" + b"/".join(rel) if rel else root.path)


def check_destination(root: SafeRoot, rel: tuple[bytes, ...], label: str) -> None:
    """Refuse before any write when an existing component is a symlink or not a directory."""
    for depth in range(1, len(rel) + 1):
        try:
            fd = root.open_dir(rel[:depth])
        except FileNotFoundError:
            return  # the rest will be created when the source connects
        except NotADirectoryError as err:
            raise InvalidPath(f"{label}: {show(b'/'.join(rel[:depth]))} exists and is not a directory") from err
        except UnsafePath as err:
            raise InvalidPath(f"{label} passes through a symlink; name the real directory instead") from err
        os.close(fd)


def no_space(writer: TreeWriter | None, root: SafeRoot, why: str) -> str:
    """The destination's filesystem is full: what the job still had to write (at least: the manifest may not have
    been complete yet) against what is free."""
    pending = free = 0
    if writer is not None:
        pending = sum(e.size for e in writer.needed.values()) + sum(s.total - s.got for s in writer.slots.values())
    with contextlib.suppress(OSError):
        vfs = os.fstatvfs(root.fd)
        free = vfs.f_bavail * vfs.f_frsize
    return (f"the filesystem is full: at least {pending:,} more bytes to write and {free:,} free; free some space "
            f"or choose another destination ({why})")
