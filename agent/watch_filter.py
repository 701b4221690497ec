"""A watch rule's filters applied to its change sets: what the filters exclude produces no change at all.

Pure but for ``is_dir``, the caller's question about a path's kind at the source now (None: it is gone).
A rename across the filters' edge (one side excluded, the other not) cannot be shipped as a rename: the set
becomes a reconciliation, whose full scan the filters shape like any transfer's. So does a change to the
tree's ``.zcignore``: it may have changed what is excluded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from zcrepl.agent.watch_coalesce import ChangeSet
from zcrepl.core.filters import IGNORE_FILE, Filter

IsDir = Callable[[bytes], "bool | None"]


def excluded(flt: Filter, path: bytes, is_dir: IsDir) -> bool:
    """``path`` or a directory above it is excluded; a path that is gone counts as excluded if either kind
    would be (its deletion is then not shipped: the destination keeps what it has, nothing is lost)."""
    parts = path.split(b"/")
    for i in range(1, len(parts)):
        if flt.excluded(b"/".join(parts[:i]), True):
            return True
    kind = is_dir(path)
    return flt.excluded_any(path) if kind is None else flt.excluded(path, kind)


def filter_changes(cs: ChangeSet, flt: Filter, is_dir: IsDir) -> ChangeSet:
    """``cs`` without what ``flt`` excludes (possibly empty), or a reconciliation (see the module doc)."""
    if cs.rescan:
        return cs
    if IGNORE_FILE in cs.upserts or IGNORE_FILE in cs.deletes or any(IGNORE_FILE in r for r in cs.renames):
        return ChangeSet(rescan=True, oldest=cs.oldest)
    if not flt:
        return cs
    for a, b in cs.renames:
        if excluded(flt, a, is_dir) or excluded(flt, b, is_dir):
            return ChangeSet(rescan=True, oldest=cs.oldest)
    return replace(cs, upserts=frozenset(p for p in cs.upserts if not excluded(flt, p, is_dir)),
                   deletes=frozenset(p for p in cs.deletes if not excluded(flt, p, is_dir)))
