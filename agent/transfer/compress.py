"""zstd on the data plane, for transfers the controller decided to compress (slow links).

A compressed range is announced by ZFILE (the FILE header, same fields) instead of FILE; its bytes then come
as ZDATA frames, each one piece of at most ``PIECE`` file bytes, and the usual FILE_END closes it. A ZDATA
payload is one method byte and the piece: ``STORED`` (raw: zstd would not make it smaller, already-compressed
data) or ``ZSTD`` (one complete zstd frame that declares its content size). Every piece stands alone, so memory
stays bounded on both ends whatever the file size, and each data connection owns its compressor and
decompressor (zstd contexts are not thread-safe, and reusing one per connection saves their set-up).

The receiver trusts nothing of a piece: the declared size must be known, at most ``PIECE`` and at most what
is left of the range, and decompression must produce exactly that, under a window bound. A zip bomb (a tiny
frame that declares or inflates to gigabytes) is refused before a byte of it is inflated.

Delta literals and the data segments of sparse files go through the same path (they are ranges sent by
``DataWorker.send_piece``); REUSE and HOLE frames carry no bytes and stay as they are.
"""

from __future__ import annotations

import os
import random
import time
from array import array
from collections.abc import Iterator

import zstandard

from zcrepl.agent.transfer import frame as fr
from zcrepl.agent.transfer.channel import Channel
from zcrepl.core.errors import ProtocolError

PIECE = 1 << 20
DEFAULT_LEVEL = 3
STORED, ZSTD = 0, 1
# A piece of PIECE bytes that zstd cannot shrink goes STORED, so no payload exceeds this.
MAX_PAYLOAD = 1 + PIECE
# The window a piece may ask the decompressor for: a frame with a known content size <= PIECE never needs more.
_MAX_WINDOW = 2 * PIECE


class Packer:
    """One data connection's compressor: file ranges in, ZDATA frames out."""

    def __init__(self, level: int = DEFAULT_LEVEL) -> None:
        self.level = level or DEFAULT_LEVEL
        self._ctx = zstandard.ZstdCompressor(level=self.level, write_content_size=True)
        self._buf = bytearray(PIECE)

    def pack(self, piece: bytes | memoryview) -> bytes:
        """The ZDATA frame of one piece (at most PIECE bytes)."""
        packed = self._ctx.compress(piece)
        if len(packed) < len(piece):
            return fr.frame(fr.T.ZDATA, bytes([ZSTD]) + packed)
        return fr.frame(fr.T.ZDATA, bytes([STORED]) + bytes(piece))

    def frames(self, fd: int, offset: int, length: int, step: int = PIECE) -> Iterator[tuple[int, bytes]]:
        """(file bytes read, ZDATA frame) for the range, piece by piece; ``step`` (at most PIECE) lets a low
        bandwidth cap pace finer. A file that shrank while read is padded with zeros to the announced length
        (those pieces count 0 file bytes), so the receiver's framing holds and FILE_END can void the range."""
        mv = memoryview(self._buf)
        step = max(1, min(step, PIECE))
        done = 0
        while done < length:
            n = os.preadv(fd, [mv[: min(step, length - done)]], offset + done)
            if n == 0:
                break
            yield n, self.pack(mv[:n])
            done += n
        left = length - done
        while left > 0:
            k = min(left, PIECE)
            yield 0, self.pack(bytes(k))
            left -= k


class Unpacker:
    """One data connection's decompressor: ZDATA frames in, bounded pieces of file bytes out."""

    def __init__(self) -> None:
        self._ctx = zstandard.ZstdDecompressor(max_window_size=_MAX_WINDOW)

    def pieces(self, ch: Channel, length: int, label: str) -> Iterator[bytes]:
        """The ``length`` bytes of one ZFILE range, read as ZDATA frames from ``ch``; ``label`` names the
        file for messages."""
        left = length
        while left > 0:
            kind, payload = ch.recv_frame(limit=MAX_PAYLOAD)
            if kind is not fr.T.ZDATA:
                raise ProtocolError(f"expected compressed data for {label}, got {kind.name}: the source sent fewer "
                                    "bytes than it announced")
            data = self.unpack(payload, left, label)
            left -= len(data)
            yield data

    def unpack(self, payload: bytes, left: int, label: str) -> bytes:
        """One ZDATA payload's bytes, never more than ``min(left, PIECE)``."""
        if not payload:
            raise ProtocolError(f"empty compressed piece for {label}")
        method, body = payload[0], memoryview(payload)[1:]
        bound = min(left, PIECE)
        if method == STORED:
            if not 0 < len(body) <= bound:
                raise ProtocolError(f"a stored piece of {len(body)} bytes for {label}, where at most {bound} "
                                    "are expected")
            return bytes(body)
        if method != ZSTD:
            raise ProtocolError(f"compressed piece for {label} with unknown method {method}")
        try:
            declared = zstandard.get_frame_parameters(body).content_size
        except zstandard.ZstdError as err:
            raise ProtocolError(f"a compressed piece for {label} is not a zstd frame ({err})") from None
        if declared == zstandard.CONTENTSIZE_UNKNOWN or not 0 < declared <= bound:
            raise ProtocolError(f"refused a compressed piece for {label} that would unpack to "
                                f"{'an undeclared size' if declared == zstandard.CONTENTSIZE_UNKNOWN else declared}"
                                f" bytes where at most {bound} may come (a decompression bomb, or a broken sender); "
                                "nothing of it was written")
        try:
            data = self._ctx.decompress(body, max_output_size=bound)
        except zstandard.ZstdError as err:
            raise ProtocolError(f"a compressed piece for {label} does not decompress ({err})") from None
        if len(data) != declared:
            raise ProtocolError(f"a compressed piece for {label} unpacked to {len(data)} bytes, not the "
                                f"{declared} it declared")
        return data


def measure_rate(level: int = DEFAULT_LEVEL, size: int = 256 << 10) -> int:
    """Bytes per second one core compresses text-like data at ``level`` (an agent measures it once at start-up
    and tells the controller, whose ``compress = auto`` weighs it against the link's throughput).

    The sample is generated (words of a seeded pseudo-random vocabulary; zstd shrinks it about 2.7x, like prose),
    so every agent measures the same work; source code and logs compress faster, random bytes much faster (zstd
    gives up on incompressible blocks early). The best of three runs counts: a neighbour taking the core for a
    moment must not make a fast host look slow. A few milliseconds: agents start often, in tests as elsewhere."""
    rng = random.Random(1234)
    table = bytes(b"etaoinshrdlucmfwypvbgkjqxz"[i % 26] for i in range(256))
    raw = rng.randbytes(4096 * 12).translate(table)
    vocab = [raw[12 * i : 12 * i + 2 + i % 10] for i in range(4096)]
    vocab[::37] = [b"\n"] * len(vocab[::37])
    picks = array("H", rng.randbytes(2 * (size // 4)))
    sample = b" ".join([vocab[i & 4095] for i in picks])[:size]
    ctx = zstandard.ZstdCompressor(level=level)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        ctx.compress(sample)
        best = min(best, time.perf_counter() - start)
    return int(len(sample) / max(best, 1e-6))
