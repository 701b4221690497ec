"""The directories a job reads from and writes to: checked before anything is read or written, and what to say
when the destination's filesystem is full."""

from __future__ import annotations

import contextlib
import os

from zcrepl.agent.transfer.apply import TreeWriter
from zcrepl.agent.transfer.saferoot import SafeRoot
from zcrepl.core.errors import InvalidPath, UnsafePath
from zcrepl.core.paths import show


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
