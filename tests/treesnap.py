"""Everything about a tree that a run which must change nothing could change (directory mtimes included)."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    if not root.exists():
        return {}
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames]:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p), st.st_mtime_ns)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", st.st_mode, st.st_mtime_ns, st.st_uid)
            else:
                out[rel] = ("file", st.st_mode, st.st_mtime_ns, st.st_ino, st.st_nlink, p.read_bytes())
    return out
