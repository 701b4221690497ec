"""The watcher's output: ``ChangeSet``, the batch of changes a watch rule ships, and the path helpers the
coalescer's rules are written in.

How a ChangeSet is applied (the contract the shipper relies on; ``tests/unit/test_watch_model.py`` checks it
against a model destination over thousands of random histories):

1. ``rescan``: reconcile the whole tree against the destination; the other fields are then empty. The
   reconciliation reads the source before ``on_changes`` returns.
2. ``renames`` in order. A rename replaces whatever is at its destination (recursively) and creates missing
   parent directories (replacing a non-directory in the way: a later read may have put one there, and the
   events that follow restore it). Should its source be missing at the destination anyway, make the destination path
   match the source as it is now (copy its subtree, or remove what is there if the source has nothing).
3. ``deletes`` (paths after the renames): remove recursively; a path that is already gone is fine.
4. ``upserts`` (paths after the renames): make the destination's path match the source *at ship time*:
   its type, metadata, content or link target, replacing what the destination has whatever its type and
   creating parents as renames do; or, if the source has nothing there any more, remove it (recursively).
   An upserted directory stands for its own metadata only; every entry below it that needs sending is
   listed too. Parents of created, deleted and renamed entries are
   upserted because their mtime moved; ``b""`` is the root itself.

Consecutive ChangeSets are applied in order, and ``on_changes`` ships (reads the source for) a set before
it returns. Paths are root-relative ``bytes`` without a leading slash.
"""

from __future__ import annotations

from dataclasses import dataclass

from zcrepl.agent.transfer.saferoot import TEMP_PREFIX

__all__ = ["ChangeSet", "is_ignored", "overlap", "parent_of", "rebase", "under"]

_SEP = b"/"
_IGNORED_INNER = _SEP + TEMP_PREFIX


@dataclass(frozen=True, slots=True)
class ChangeSet:
    """One immutable batch of changes, applied as described in the module docstring."""

    upserts: frozenset[bytes] = frozenset()
    deletes: frozenset[bytes] = frozenset()
    renames: tuple[tuple[bytes, bytes], ...] = ()
    rescan: bool = False
    oldest: float = 0.0
    """Clock time of the oldest change in the set (the watcher's clock, ``time.monotonic`` by default)."""

    def __len__(self) -> int:
        return len(self.upserts) + len(self.deletes) + len(self.renames) + int(self.rescan)


def is_ignored(path: bytes) -> bool:
    """True if any component of ``path`` is in the agent's own temp namespace (``.zc.*``)."""
    return path.startswith(TEMP_PREFIX) or _IGNORED_INNER in path


def parent_of(path: bytes) -> bytes:
    return path.rpartition(_SEP)[0]


def under(path: bytes, top: bytes) -> bool:
    """``path`` is ``top`` or inside it (``top == b""`` is the root, which holds everything)."""
    return not top or path == top or path.startswith(top + _SEP)


def overlap(a: bytes, b: bytes) -> bool:
    return under(a, b) or under(b, a)


def rebase(path: bytes, old: bytes, new: bytes) -> bytes:
    return new + path[len(old):]

