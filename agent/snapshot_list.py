"""zc-ctl snapshots on the agent: what a snapshots directory holds, read through the export (confined like every
other path from outside: no escape, no symlink followed) and never changed.

Whether an in-progress directory is being written is told by its lock, as the snapshot runs themselves tell it
(zcrepl.agent.transfer.snapshot: the writer holds an exclusive ``flock`` on it). The lock is looked up in
``/proc/locks`` rather than tried: taking it, even for a moment, could make a run that starts in that moment
find its own directory busy and fail its attempt.
"""

from __future__ import annotations

import os

from zcrepl.agent.exports import Exports
from zcrepl.core.errors import InvalidPath, UnsafePath
from zcrepl.core.paths import show
from zcrepl.core.snapshots import IN_PROGRESS, SnapshotEntry, parse_name

LOCKS = "/proc/locks"


def list_snapshots(exports: Exports, host: str, path: bytes, locks: str = LOCKS) -> list[SnapshotEntry]:
    """The complete snapshots and in-progress directories in ``path``, oldest first; InvalidPath (one sentence)
    for a path outside the exports, one that is not a directory, or a directory with no snapshot in it."""
    root, rel = exports.resolve(path)
    label = f"{host}:{show(path)}"
    try:
        dfd = root.open_dir(rel)
    except FileNotFoundError as err:
        raise InvalidPath(f"{label} does not exist; name the directory zc-ctl snapshot writes into") from err
    except (NotADirectoryError, UnsafePath) as err:
        raise InvalidPath(f"{label} is not a directory (or passes through a symlink); name the real directory "
                          "snapshots are kept in") from err
    except OSError as err:
        raise InvalidPath(f"cannot open {label}: {err.strerror or err}") from err
    try:
        entries: list[tuple[str, bool, int]] = []  # (name, in progress, inode)
        with os.scandir(dfd) as it:
            for de in it:
                if not de.is_dir(follow_symlinks=False):  # a file under a snapshot's name is no snapshot
                    continue
                name = os.fsencode(de.name)
                inner = name[1:-len(IN_PROGRESS)]
                if parse_name(name) is not None:
                    entries.append((name.decode(), False, 0))
                elif name.startswith(b".") and name.endswith(IN_PROGRESS) and parse_name(inner) is not None:
                    entries.append((inner.decode(), True, de.stat(follow_symlinks=False).st_ino))
        device = os.fstat(dfd).st_dev
    except OSError as err:
        raise InvalidPath(f"cannot list {label}: {err.strerror or err}") from err
    finally:
        os.close(dfd)
    if not entries:
        raise InvalidPath(f"{label} is not a snapshots directory: nothing in it is named as zc-ctl snapshot names "
                          "snapshots (a UTC time like 2026-11-30T020000Z)")
    held = _flocked(locks, device) if any(ino for _, _, ino in entries) else set()
    return [SnapshotEntry(name, in_progress=busy, writing=busy and ino in held)
            for name, busy, ino in sorted(entries)]


def _flocked(locks: str, device: int) -> set[int]:
    """Inodes on ``device`` with a flock held, from the kernel's table (lines like
    ``1: FLOCK  ADVISORY  WRITE 4242 08:01:1234 0 EOF``; a blocked request's line, ``1: -> FLOCK ...``, names an
    inode whose lock is held too)."""
    out: set[int] = set()
    try:
        with open(locks, encoding="ascii", errors="replace") as f:
            lines = f.readlines()
    except OSError:
        return out
    for line in lines:
        parts = [p for p in line.split() if p != "->"]
        if len(parts) < 6 or parts[1] != "FLOCK":
            continue
        try:
            major, minor, ino = parts[5].split(":")
            if os.makedev(int(major, 16), int(minor, 16)) == device:
                out.add(int(ino))
        except ValueError:
            continue
    return out
