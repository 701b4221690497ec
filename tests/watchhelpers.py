"""The watch tests' shared pieces (tests/unit/test_watch_*.py): a Coalescer with the tests' window and quiet
time, and the merge of the change sets it gives."""

from __future__ import annotations

from zcrepl.agent.watch_coalesce import ChangeSet, Coalescer

W, Q = 0.05, 0.2


def _co(**kw: object) -> Coalescer:
    return Coalescer(window=W, quiet=Q, **kw)  # type: ignore[arg-type]


def _merge(sets: list[ChangeSet]) -> tuple[set[bytes], set[bytes], list[tuple[bytes, bytes]], bool]:
    ups: set[bytes] = set()
    dels: set[bytes] = set()
    ren: list[tuple[bytes, bytes]] = []
    for cs in sets:
        ups |= cs.upserts
        dels |= cs.deletes
        ren.extend(cs.renames)
    return ups, dels, ren, any(cs.rescan for cs in sets)


def _flush(co: Coalescer, now: float, max_batch: int = 10000) -> list[ChangeSet]:
    return co.take(now + Q + W + 1, max_batch)
