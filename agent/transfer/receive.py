"""The receiving side of one transfer attempt: validate the manifest, diff, write atomically, delete.

The sender is untrusted. Every name is validated (reject, never normalise), must sit under a
directory this manifest already announced, and every filesystem operation goes through fds confined
to the destination root (openat2 RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS or an O_NOFOLLOW walk). Files are
written to a temp name in their directory and renamed into place only after the announced number of
bytes and a valid FILE_END arrived, so a reader never sees a partial file under its final name.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

import xxhash

from zcrepl.agent.transfer import frame as fr
from zcrepl.agent.transfer.atomic import AtomicFile, remove_entry, replace_symlink, set_dir_meta
from zcrepl.agent.transfer.frame import Channel, Entry, Kind
from zcrepl.agent.transfer.saferoot import SafeRoot, validate_relpath
from zcrepl.agent.transfer.scan import file_digest
from zcrepl.core.errors import ProtocolError, TransferError, UnsafePath
from zcrepl.core.logs import kv
from zcrepl.core.paths import show
from zcrepl.core.types import Durability, JobOptions, TransferStats

log = logging.getLogger(__name__)

_BUF = 1 << 20
_libc = ctypes.CDLL(None, use_errno=True)


def syncfs(fd: int) -> None:
    """Flush the whole filesystem holding ``fd``: one call makes every file of the job durable."""
    if _libc.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@dataclass
class ReceiveSpec:
    job_id: int
    attempt: int
    export: SafeRoot
    rel: tuple[bytes, ...]  # job root below the export
    options: JobOptions
    label: str  # "hostB:/backup/data", for messages
    on_progress: Callable[[TransferStats], None] = field(default=lambda _s: None)


class Receiver:
    def __init__(self, spec: ReceiveSpec, ch: Channel) -> None:
        self.spec = spec
        self.ch = ch
        self.root: SafeRoot | None = None
        self.entries: list[Entry] = []
        self.kinds: dict[bytes, Kind] = {}
        self.children: dict[bytes, set[bytes]] = {}
        self.needed: set[int] = set()
        self.manifest_done = False
        self.buf = bytearray(_BUF)
        self.files_done = self.bytes_done = self.skipped = self.deleted = self.errors = 0
        self.first_error = ""
        self.fsync_files = spec.options.durability is Durability.FILE

    # -- driver -------------------------------------------------------------------------------------
    def run(self) -> TransferStats:
        """Serve the connection to the end. Raises ProtocolError/TransferError on failure."""
        root_fd = self.spec.export.open_dir(self.spec.rel, create=True, mode=0o755)
        self.root = SafeRoot.from_fd(root_fd, self.spec.export.path)
        try:
            while True:
                kind, payload = self.ch.recv_frame()
                if kind is fr.T.ENTRIES:
                    self._on_entries(fr.decode_entries(payload))
                elif kind is fr.T.MANIFEST_END:
                    self._on_manifest_end(fr.decode_u64(payload, "MANIFEST_END"))
                elif kind is fr.T.FILE:
                    self._on_file(fr.decode_file(payload))
                elif kind is fr.T.SENDER_DONE:
                    return self._finish()
                elif kind is fr.T.ABORT:
                    raise TransferError(f"the source aborted: {fr.decode_text(payload)}")
                else:
                    raise ProtocolError(f"unexpected {kind.name} frame from the source")
        finally:
            self.root.close()

    def stats(self) -> TransferStats:
        return TransferStats(
            entries=len(self.entries), files_done=self.files_done, bytes_done=self.bytes_done,
            files_skipped=self.skipped, deleted=self.deleted, errors=self.errors,
            wire_bytes=self.ch.sent + self.ch.received, scan_done=self.manifest_done,
        )

    # -- manifest -----------------------------------------------------------------------------------
    def _on_entries(self, batch: list[Entry]) -> None:
        if self.manifest_done:
            raise ProtocolError("ENTRIES after MANIFEST_END")
        need: list[int] = []
        for e in batch:
            index = len(self.entries)
            parts = self._admit(index, e)
            self.entries.append(e)
            try:
                if e.kind is Kind.DIR:
                    if parts:
                        self._ensure_dir(parts)
                elif e.kind is Kind.SYMLINK:
                    self._apply_symlink(parts, e)
                elif self._up_to_date(parts, e):
                    self.skipped += 1
                else:
                    need.append(index)
            except (OSError, UnsafePath) as err:
                self._entry_failed(e.path, err)
        if need:
            self.needed.update(need)
            self.ch.send(fr.encode_need(need))

    def _admit(self, index: int, e: Entry) -> tuple[bytes, ...]:
        """Protocol-level checks of one entry; any failure drops the connection."""
        if index == 0:
            if e.kind is not Kind.DIR or e.path != b"":
                raise ProtocolError("the manifest must start with the root directory")
            self.kinds[b""] = Kind.DIR
            self.children[b""] = set()
            return ()
        parts = validate_relpath(e.path)  # UnsafePath: '..', '/', NUL, empty, our temp prefix...
        if not parts:
            raise UnsafePath("a second root entry in the manifest")
        if e.path in self.kinds:
            raise ProtocolError(f"duplicate name in the manifest: {show(e.path)}")
        parent = b"/".join(parts[:-1])
        if self.kinds.get(parent) is not Kind.DIR:
            # Also what stops a name through a symlink the same manifest created (CVE-2024-12087).
            raise UnsafePath(f"{show(e.path)}: its parent is not a directory announced earlier in the manifest")
        self.kinds[e.path] = e.kind
        self.children[parent].add(parts[-1])
        if e.kind is Kind.DIR:
            self.children[e.path] = set()
        return parts

    def _on_manifest_end(self, count: int) -> None:
        if count != len(self.entries):
            raise ProtocolError(f"MANIFEST_END says {count} entries, {len(self.entries)} arrived")
        self.manifest_done = True
        self.ch.send(fr.frame(fr.T.NEED_END))

    # -- applying entries ---------------------------------------------------------------------------
    def _ensure_dir(self, parts: tuple[bytes, ...]) -> None:
        assert self.root is not None
        pfd, leaf = self.root.open_parent(parts)
        try:
            st = _lstat(pfd, leaf)
            if st is not None and stat.S_ISDIR(st.st_mode):
                if st.st_mode & 0o700 != 0o700 and os.geteuid() != 0:
                    dfd = self.root.open_dir(parts)  # we must be able to write into it until the end
                    try:
                        os.fchmod(dfd, stat.S_IMODE(st.st_mode) | 0o700)
                    finally:
                        os.close(dfd)
                return
            if st is not None:
                remove_entry(pfd, leaf)  # a file or symlink where the source has a directory
            try:
                os.mkdir(leaf, 0o700, dir_fd=pfd)
            except FileExistsError:
                pass
        finally:
            os.close(pfd)

    def _apply_symlink(self, parts: tuple[bytes, ...], e: Entry) -> None:
        assert self.root is not None
        pfd, leaf = self.root.open_parent(parts)
        try:
            st = _lstat(pfd, leaf)
            if st is not None and stat.S_ISLNK(st.st_mode) and os.readlink(leaf, dir_fd=pfd) == e.target:
                if st.st_mtime_ns != e.mtime_ns:
                    os.utime(leaf, ns=(st.st_atime_ns, e.mtime_ns), dir_fd=pfd, follow_symlinks=False)
                self.skipped += 1
                return
            if st is not None and stat.S_ISDIR(st.st_mode):
                self._clear_dir_for(pfd, leaf, e.path, "a symlink")
            replace_symlink(pfd, leaf, e.target, e.mtime_ns)
        finally:
            os.close(pfd)

    def _clear_dir_for(self, pfd: int, leaf: bytes, path: bytes, what: str) -> None:
        if not self.spec.options.delete:
            try:
                os.rmdir(leaf, dir_fd=pfd)
                return
            except OSError as err:
                raise OSError(err.errno, f"a non-empty directory stands where the source has {what}; "
                                         "rerun with --delete to replace it") from err
        self.deleted += remove_entry(pfd, leaf)

    def _up_to_date(self, parts: tuple[bytes, ...], e: Entry) -> bool:
        """True when the destination already holds this file; fixes mode/mtime drift in place."""
        assert self.root is not None
        st = self.root.lstat(parts)
        if st is None or not stat.S_ISREG(st.st_mode) or st.st_size != e.size:
            return False
        if self.spec.options.checksum:
            fd = self.root.open_read(parts)
            try:
                if file_digest(fd, self.buf) != e.digest:
                    return False
                self._fix_meta(fd, st, e)
            finally:
                os.close(fd)
            return True
        if st.st_mtime_ns != e.mtime_ns:
            return False
        if stat.S_IMODE(st.st_mode) != e.mode & 0o777:
            fd = self.root.open_read(parts)
            try:
                self._fix_meta(fd, st, e)
            finally:
                os.close(fd)
        return True

    @staticmethod
    def _fix_meta(fd: int, st: os.stat_result, e: Entry) -> None:
        if stat.S_IMODE(st.st_mode) != e.mode & 0o777:
            os.fchmod(fd, e.mode & 0o777)
        if st.st_mtime_ns != e.mtime_ns:
            os.utime(fd, ns=(st.st_atime_ns, e.mtime_ns))

    # -- file data ----------------------------------------------------------------------------------
    def _on_file(self, head: fr.FileHead) -> None:
        if head.index not in self.needed:
            raise ProtocolError(f"FILE for index {head.index}, which was not asked for")
        self.needed.discard(head.index)
        e = self.entries[head.index]
        assert self.root is not None
        self._check_space(head.size)
        try:
            pfd, leaf = self.root.open_parent(validate_relpath(e.path))
        except (OSError, UnsafePath) as err:
            self._entry_failed(e.path, err)  # e.g. a parent swapped for a symlink mid-job
            self._discard_bytes(head.size)
            self._expect_file_end()
            return
        try:
            self._write_file(pfd, leaf, head, e)
        finally:
            os.close(pfd)
        self.spec.on_progress(self.stats())

    def _write_file(self, pfd: int, leaf: bytes, head: fr.FileHead, e: Entry) -> None:
        hasher = xxhash.xxh3_128() if self.spec.options.checksum else None
        try:
            tmp = AtomicFile(pfd, leaf, head.size)
        except OSError as err:
            self._entry_failed(e.path, err)
            self._discard_bytes(head.size)
            self._expect_file_end()
            return
        with tmp:
            self._recv_to_fd(tmp.fd, head.size, hasher)
            status = self._expect_file_end()
            if status != fr.FILE_OK:
                return  # the source changed while it was read; the sender counts it
            if hasher is not None and e.digest and hasher.digest() != e.digest:
                self._entry_failed(e.path, OSError(0, "content hash differs from the manifest"))
                return
            try:
                tmp.commit(head.mode, head.mtime_ns, fsync=self.fsync_files)
            except IsADirectoryError:
                self._clear_dir_for(pfd, leaf, e.path, "a file")
                tmp.commit(head.mode, head.mtime_ns, fsync=self.fsync_files)
        self.files_done += 1
        self.bytes_done += head.size

    def _recv_to_fd(self, fd: int, size: int, hasher: xxhash.xxh3_128 | None) -> None:
        mv = memoryview(self.buf)
        sock = self.ch.sock
        left = size
        while left:
            n = sock.recv_into(mv, min(left, _BUF))
            if n == 0:
                raise ProtocolError(f"truncated file data: {size - left} of {size} announced bytes arrived")
            chunk = mv[:n]
            if hasher is not None:
                hasher.update(chunk)
            written = 0
            while written < n:
                written += os.write(fd, chunk[written:])
            left -= n
            self.ch.received += n

    def _discard_bytes(self, size: int) -> None:
        mv = memoryview(self.buf)
        left = size
        while left:
            n = self.ch.sock.recv_into(mv, min(left, _BUF))
            if n == 0:
                raise ProtocolError("truncated file data")
            left -= n
            self.ch.received += n

    def _expect_file_end(self) -> int:
        kind, payload = self.ch.recv_frame(limit=16)
        if kind is not fr.T.FILE_END or len(payload) != 1 or payload[0] not in (fr.FILE_OK, fr.FILE_CHANGED):
            raise ProtocolError(f"expected FILE_END after the file data, got {kind.name}: "
                                "the source sent more or fewer bytes than it announced")
        return payload[0]

    def _check_space(self, size: int) -> None:
        assert self.root is not None
        vfs = os.statvfs(self.root.fd)
        free = vfs.f_bavail * vfs.f_frsize
        if size > free:
            raise TransferError(
                f"{self.spec.label}: not enough space for a file of {size} bytes ({free} free); "
                "free some space or choose another destination"
            )

    # -- end of transfer ----------------------------------------------------------------------------
    def _finish(self) -> TransferStats:
        if not self.manifest_done:
            raise ProtocolError("SENDER_DONE before MANIFEST_END")
        if self.needed:
            raise ProtocolError(f"the source finished without sending {len(self.needed)} requested files")
        if self.spec.options.delete:
            self._delete_extras()
        self._finish_dirs()
        assert self.root is not None
        if self.spec.options.durability is Durability.JOB:
            syncfs(self.root.fd)
        elif self.fsync_files:
            os.fsync(self.root.fd)  # directory entries created at the top level
        result = {
            "files_done": self.files_done, "bytes_done": self.bytes_done, "files_skipped": self.skipped,
            "deleted": self.deleted, "errors": self.errors, "first_error": self.first_error,
        }
        self.ch.send(fr.frame(fr.T.RESULT, json.dumps(result).encode()))
        return self.stats()

    def _delete_extras(self) -> None:
        """Remove what the source lacks, only inside directories this manifest announced."""
        assert self.root is not None
        for dpath, names in self.children.items():
            try:
                dfd = self.root.open_dir(validate_relpath(dpath))
            except (OSError, UnsafePath) as err:
                self._entry_failed(dpath, err)
                continue
            try:
                with os.scandir(dfd) as it:
                    extras = [os.fsencode(de.name) for de in it]
                for name in extras:
                    if name not in names:
                        try:
                            self.deleted += remove_entry(dfd, name)
                        except OSError as err:
                            self._entry_failed((dpath + b"/" if dpath else b"") + name, err)
            finally:
                os.close(dfd)

    def _finish_dirs(self) -> None:
        """Directory modes and mtimes, children before parents (creating files changes a dir's mtime)."""
        assert self.root is not None
        for e in reversed(self.entries):
            if e.kind is not Kind.DIR:
                continue
            try:
                dfd = self.root.open_dir(validate_relpath(e.path))
            except (OSError, UnsafePath) as err:
                self._entry_failed(e.path, err)
                continue
            try:
                set_dir_meta(dfd, e.mode, e.mtime_ns)
                if self.fsync_files:
                    os.fsync(dfd)  # its new entries (mkdir, renames) are durable too
            finally:
                os.close(dfd)

    def _entry_failed(self, path: bytes, err: BaseException) -> None:
        self.errors += 1
        msg = f"{self.spec.label}/{show(path)}: {getattr(err, 'strerror', None) or err}"
        if not self.first_error:
            self.first_error = msg
        log.warning("entry failed", extra=kv(job=self.spec.job_id, path=path, error=str(err)))


def _lstat(dir_fd: int, leaf: bytes) -> os.stat_result | None:
    try:
        return os.lstat(leaf, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
