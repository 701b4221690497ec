"""The hidden partial area of a destination root: data of interrupted large files, kept for resume.

``<root>/.zc.partial/<key>.part`` holds the bytes, ``<key>.json`` the source identity (size, mtime)
and the byte intervals known to be written (fsynced before they are recorded). The directory starts
with the agent's temp prefix, so scans skip it and manifests can never name it. A retry that needs the
same file version takes the partial back as its temp file; the sender checks the intervals by hash and
sends only the gaps.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass

import xxhash

from zcrepl.agent.transfer.atomic import AtomicFile
from zcrepl.agent.transfer.saferoot import SafeRoot, temp_name, writer_gone
from zcrepl.core.config import AgentConfig
from zcrepl.core.errors import UnsafePath
from zcrepl.core.settings import default_of

AREA = b".zc.partial"
RESUME_MIN = 8 << 20  # smaller files are simply sent again
MAX_AGE = default_of(AgentConfig, "partial_max_age")  # the daemon's sweeper passes its config's
MAX_INTERVALS = 4096
_OPEN = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC


def merge(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, non-overlapping, non-empty (offset, length) intervals."""
    out: list[tuple[int, int]] = []
    for off, length in sorted(i for i in intervals if i[1] > 0):
        if out and off <= out[-1][0] + out[-1][1]:
            last_off, last_len = out[-1]
            out[-1] = (last_off, max(last_len, off + length - last_off))
        else:
            out.append((off, length))
    return out


def intervals_digest(fd: int, intervals: list[tuple[int, int]], buf: bytearray) -> bytes:
    """xxh3-128 over the bytes of ``intervals`` in order (what both ends compare before a resume)."""
    h = xxhash.xxh3_128()
    mv = memoryview(buf)
    for off, length in intervals:
        done = 0
        while done < length:
            n = os.preadv(fd, [mv[: min(len(buf), length - done)]], off + done)
            if n == 0:
                return b""  # shorter than claimed: never matches
            h.update(mv[:n])
            done += n
    return h.digest()


@dataclass(frozen=True)
class Partial:
    key: bytes
    size: int
    mtime_ns: int
    intervals: list[tuple[int, int]]


class PartialArea:
    def __init__(self, root: SafeRoot) -> None:
        self.root = root

    @staticmethod
    def key(relpath: bytes) -> bytes:
        return hashlib.sha256(relpath).hexdigest()[:40].encode()

    def _dir(self, create: bool) -> int | None:
        """fd of the area, directly under the root fd (one component, O_NOFOLLOW: never a symlink).

        Our own reserved name can't go through SafeRoot.open_dir, which refuses the temp prefix.
        """
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return os.open(AREA, flags, dir_fd=self.root.fd)
        except FileNotFoundError:
            if not create:
                return None
        with contextlib.suppress(FileExistsError):
            os.mkdir(AREA, 0o700, dir_fd=self.root.fd)
        return os.open(AREA, flags, dir_fd=self.root.fd)

    def open_part(self, p: Partial) -> int | None:
        """A read-only fd of a partial's data, or None."""
        dfd = self._dir(create=False)
        if dfd is None:
            return None
        try:
            return os.open(p.key + b".part", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        except OSError:
            return None
        finally:
            os.close(dfd)

    def find(self, relpath: bytes, size: int, mtime_ns: int) -> Partial | None:
        """The partial of exactly this source version, or None (stale partials are dropped)."""
        try:
            dfd = self._dir(create=False)
        except OSError:
            return None
        if dfd is None:
            return None
        key = self.key(relpath)
        try:
            try:
                fd = os.open(key + b".json", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
            except FileNotFoundError:
                return None
            with os.fdopen(fd, "rb") as f:
                doc = json.loads(f.read(1 << 20))
            intervals = merge([(int(o), int(n)) for o, n in doc["intervals"]][:MAX_INTERVALS])
            st = os.stat(key + b".part", dir_fd=dfd, follow_symlinks=False)
            if (doc["path"] != relpath.hex() or doc["size"] != size or doc["mtime_ns"] != mtime_ns
                    or st.st_size < max((o + n for o, n in intervals), default=0)):
                self._remove(dfd, key)
                return None
            return Partial(key, size, mtime_ns, intervals)
        except (OSError, ValueError, KeyError, TypeError):
            self._remove(dfd, key)
            return None
        finally:
            os.close(dfd)

    def save(self, relpath: bytes, tmp: AtomicFile, size: int, mtime_ns: int,
             intervals: list[tuple[int, int]]) -> bool:
        """Keep ``tmp`` as the partial of ``relpath``; False (and the temp discarded) if that fails."""
        intervals = merge(intervals)
        if not intervals:
            tmp.discard()
            return False
        try:
            dfd = self._dir(create=True)
        except OSError:
            tmp.discard()
            return False
        assert dfd is not None
        key = self.key(relpath)
        try:
            self._remove(dfd, key)
            tmp.keep(dfd, key + b".part")
            doc = {"path": relpath.hex(), "size": size, "mtime_ns": mtime_ns, "intervals": intervals,
                   "saved_at": time.time()}
            side = temp_name(key)
            fd = os.open(side, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=dfd)
            with os.fdopen(fd, "wb") as f:
                f.write(json.dumps(doc).encode())
                f.flush()
                os.fsync(f.fileno())
            os.rename(side, key + b".json", src_dir_fd=dfd, dst_dir_fd=dfd)
            os.fsync(dfd)
            return True
        except OSError:
            self._remove(dfd, key)
            return False
        finally:
            os.close(dfd)

    def take(self, p: Partial, dst_dir_fd: int, leaf: bytes) -> AtomicFile | None:
        """Move the partial into ``dst_dir_fd`` as the temp file of ``leaf``; the sidecar goes away."""
        dfd = self._dir(create=False)
        if dfd is None:
            return None
        tmp = temp_name(leaf)
        try:
            os.rename(p.key + b".part", tmp, src_dir_fd=dfd, dst_dir_fd=dst_dir_fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p.key + b".json", dir_fd=dfd)
            fd = os.open(tmp, _OPEN, dir_fd=dst_dir_fd)
            st = os.fstat(fd)
            if st.st_nlink != 1:  # another name for it exists somewhere: we would write through it
                os.close(fd)
                raise OSError(0, "partial file has other links")
            if st.st_size < p.size:
                os.ftruncate(fd, p.size)
            return AtomicFile.adopt(dst_dir_fd, leaf, tmp, fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dst_dir_fd)
            self._remove(dfd, p.key)
            return None
        finally:
            os.close(dfd)

    def sweep(self, max_age: float = MAX_AGE, max_bytes: int = 0) -> tuple[int, int]:
        """Remove partials older than ``max_age`` seconds (Syncthing's TempLifetime), then the oldest until the
        area holds at most ``max_bytes`` (0: a tenth of its filesystem), and sidecar temps whose writer is gone.
        Returns (partials removed, their bytes)."""
        dfd = self._dir(create=False)
        if dfd is None:
            return 0, 0
        groups: dict[bytes, list[tuple[bytes, os.stat_result]]] = {}
        try:
            with os.scandir(dfd) as it:
                for de in it:
                    name = os.fsencode(de.name)
                    with contextlib.suppress(OSError):
                        if writer_gone(name):
                            os.unlink(name, dir_fd=dfd)
                        elif name.endswith((b".part", b".json")):
                            groups.setdefault(name.rpartition(b".")[0], []).append(
                                (name, de.stat(follow_symlinks=False)))
            if not max_bytes:
                vfs = os.fstatvfs(dfd)
                max_bytes = vfs.f_blocks * vfs.f_frsize // 10
            now = time.time()
            # Oldest first, by the newest of each partial's two files (the sidecar is rewritten as data lands).
            ordered = sorted(groups.items(), key=lambda g: max(st.st_mtime for _, st in g[1]))
            total = sum(st.st_blocks * 512 for _, files in ordered for _, st in files)
            removed = freed = 0
            for _key, files in ordered:
                size = sum(st.st_blocks * 512 for _, st in files)
                if now - max(st.st_mtime for _, st in files) <= max_age and total <= max_bytes:
                    break
                for name, _ in files:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(name, dir_fd=dfd)
                removed, freed, total = removed + 1, freed + size, total - size
        finally:
            os.close(dfd)
        self.remove_if_empty()
        return removed, freed

    def drop(self, relpaths: list[bytes]) -> None:
        dfd = self._dir(create=False)
        if dfd is None:
            return
        try:
            for rel in relpaths:
                self._remove(dfd, self.key(rel))
        finally:
            os.close(dfd)
        self.remove_if_empty()

    def remove_if_empty(self) -> None:
        """Remove the area once empty, keeping the destination directory's mtime (it is replicated data)."""
        with contextlib.suppress(OSError):
            st = os.fstat(self.root.fd)
            os.rmdir(AREA, dir_fd=self.root.fd)
            os.utime(self.root.fd, ns=(st.st_atime_ns, st.st_mtime_ns))

    @staticmethod
    def _remove(dfd: int, key: bytes) -> None:
        for suffix in (b".part", b".json"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(key + suffix, dir_fd=dfd)


def drop_partials(export: SafeRoot, rel: tuple[bytes, ...], relpaths: list[bytes] | None) -> None:
    """Drop these partials of the destination ``rel`` of ``export`` (all of them: None)."""
    try:
        root = SafeRoot.from_fd(export.open_dir(rel), export.path)
    except (OSError, UnsafePath):
        return
    try:
        area = PartialArea(root)
        if relpaths is None:
            area.sweep(max_age=-1.0)
        else:
            area.drop(relpaths)
    finally:
        root.close()
