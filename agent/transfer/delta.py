"""Block-level delta: which ranges of a changed file the receiver can take from its old version.

Blocks are aligned and fixed per file, 128 KiB to 16 MiB in powers of two, about 2,000 per file (the
sizes Syncthing uses). Aligned blocks catch in-place changes and appends; an insertion shifts
everything after it and degrades to sending the rest, which is the price of never needing a rolling
checksum (and of every sent range going out with sendfile).
"""

from __future__ import annotations

import os

import xxhash

BLOCK_MIN = 128 << 10
BLOCK_MAX = 16 << 20
DESIRED_BLOCKS = 2000
DELTA_MIN = 4 << 20  # smaller changed files are simply sent whole


def block_size(size: int) -> int:
    block = BLOCK_MIN
    while block < BLOCK_MAX and size // block > DESIRED_BLOCKS:
        block <<= 1
    return block


def hash_blocks(fd: int, size: int, block: int, buf: bytearray) -> tuple[list[bytes], bytes]:
    """Per-block xxh3-128 and the whole-file xxh3-128, in one read of ``size`` bytes."""
    whole = xxhash.xxh3_128()
    hashes: list[bytes] = []
    mv = memoryview(buf)
    off = 0
    while off < size:
        want = min(block, size - off)
        h = xxhash.xxh3_128()
        got = 0
        while got < want:
            n = os.preadv(fd, [mv[: min(len(buf), want - got)]], off + got)
            if n == 0:
                return hashes, b""  # the file shrank: the caller treats the source as changed
            h.update(mv[:n])
            whole.update(mv[:n])
            got += n
        hashes.append(h.digest())
        off += want
    return hashes, whole.digest()


def plan(theirs: tuple[bytes, ...] | list[bytes], mine: list[bytes], size: int, block: int,
         ) -> list[tuple[int, int, bool]]:
    """Coalesced (offset, length, reuse) ranges covering ``size``: reuse where the blocks match."""
    out: list[tuple[int, int, bool]] = []
    for i, h in enumerate(mine):
        off = i * block
        length = min(block, size - off)
        reuse = i < len(theirs) and theirs[i] == h
        if out and out[-1][2] == reuse and out[-1][0] + out[-1][1] == off:
            out[-1] = (out[-1][0], out[-1][1] + length, reuse)
        else:
            out.append((off, length, reuse))
    return out


def gaps(intervals: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    """The ranges of [0, size) that ``intervals`` (sorted, merged) do not cover."""
    out, pos = [], 0
    for off, length in intervals:
        if off > pos:
            out.append((pos, off - pos))
        pos = max(pos, off + length)
    if pos < size:
        out.append((pos, size - pos))
    return out
