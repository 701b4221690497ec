"""In-kernel file-to-file copy with its fallbacks: copy_file_range (reflinks where the filesystem has
them) -> sendfile -> pread+pwrite. Each step down happens only on the errors that mean "unsupported"."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

_CHUNK = 64 << 20


@dataclass(frozen=True)
class CopyPaths:
    """The in-kernel copies ``copy_range`` may try, best first; pread+pwrite is always the last resort. Turning
    one off takes the path a filesystem or kernel without it takes anyway (tests exercise each fallback so)."""

    copy_file_range: bool = True
    sendfile: bool = True


ALL_PATHS = CopyPaths()


def copy_range(src: int, dst: int, offset: int, length: int, buf: list[bytearray],
               paths: CopyPaths = ALL_PATHS) -> int:
    """Copy ``length`` bytes at ``offset`` from ``src`` to ``dst``; fewer only if the source ended early."""
    done = 0
    mode = "cfr" if paths.copy_file_range else ("sendfile" if paths.sendfile else "rw")
    while done < length:
        count = min(_CHUNK, length - done)
        try:
            if mode == "cfr":
                n = os.copy_file_range(src, dst, count, offset + done, offset + done)
            elif mode == "sendfile":
                os.lseek(dst, offset + done, os.SEEK_SET)
                n = os.sendfile(dst, src, offset + done, count)
            else:
                if not buf:
                    buf.append(bytearray(1 << 20))
                mv = memoryview(buf[0])[: min(count, 1 << 20)]
                n = os.preadv(src, [mv], offset + done)
                w = 0
                while w < n:
                    w += os.pwrite(dst, mv[w:n], offset + done + w)
        except OSError as err:
            # Cross-filesystem or unsupported: step down a path and retry this chunk.
            if err.errno in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP) and mode != "rw":
                mode = "sendfile" if mode == "cfr" and paths.sendfile else "rw"
                continue
            raise
        if n == 0:
            break
        done += n
    return done
