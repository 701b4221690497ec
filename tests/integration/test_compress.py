"""Compressed transfers (zstd on the data connections) in one process, over real loopback sockets and real
files: full files, delta literals, sparse files and empty files arrive as exact copies with fewer wire bytes,
and a hostile sender's decompression bomb is refused before it is inflated, leaving nothing behind."""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from zchelpers import diff_trees, rewrite, snapshot

from zcrepl.agent.transfer import compress
from zcrepl.agent.transfer import entrycodec as ec
from zcrepl.agent.transfer import frame as fr
from zcrepl.agent.transfer.cancel import Cancel
from zcrepl.agent.transfer.channel import Channel
from zcrepl.agent.transfer.frame import Entry, FileHead, Hello, Kind
from zcrepl.agent.transfer.receive import ReceiveSession, ReceiveSpec
from zcrepl.agent.transfer.saferoot import SafeRoot
from zcrepl.agent.transfer.send import Sender, SendSpec
from zcrepl.agent.transfer.server import DataServer, Grant, TicketBook
from zcrepl.core.config import AgentConfig
from zcrepl.core.errors import ProtocolError
from zcrepl.core.types import Compress, JobOptions, TransferStats

ON = Compress.ON


def text(n: int, seed: int = 1) -> bytes:
    """``n`` bytes of text-like data (zstd shrinks it about threefold)."""
    rng = random.Random(seed)
    words = [f"w{rng.randrange(1 << 20):x}" for _ in range(5000)] + ["\n"] * 400
    return " ".join(rng.choices(words, k=n // 5 + 16)).encode()[:n]


class Plane:
    """A receiving data server and a way to run one sender, or a hand-driven hostile one, against it."""

    def __init__(self, dst_export: Path) -> None:
        self.tickets = TicketBook()
        self.server = DataServer("127.0.0.1", 0, self.tickets, AgentConfig())
        self.server.start()
        self.export = SafeRoot(os.fsencode(dst_export))
        self.results: list[Any] = []
        self.jobs = 0

    def grant(self, rel: bytes, opts: JobOptions) -> tuple[int, bytes, threading.Event]:
        self.jobs += 1
        job, ticket, done = self.jobs, os.urandom(32), threading.Event()

        def serve(ch: Channel, hello: Hello) -> None:
            session = ReceiveSession(ReceiveSpec(job, 1, self.export, (rel,), opts, "hostB:/dst"), self.tickets)
            try:
                self.results.append(session.serve_control(ch, hello))
            except Exception as err:
                self.results.append(err)
            finally:
                done.set()

        self.tickets.register(ticket, Grant(job, 1, time.monotonic() + 30, serve))
        return job, ticket, done

    def run(self, src: Path, rel: bytes, **options: Any) -> tuple[TransferStats, Any]:
        opts = JobOptions(**options)
        job, ticket, done = self.grant(rel, opts)
        spec = SendSpec(job, 1, ticket, self.server.address, opts, Cancel(), lambda _s: None)
        root = SafeRoot(os.fsencode(src))
        try:
            stats = Sender(spec, root).run()
        finally:
            root.close()
            done.wait(10)
        return stats, self.results[-1]

    def close(self) -> None:
        self.server.stop()
        self.export.close()


@pytest.fixture(scope="module")
def dst(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dst")


@pytest.fixture(scope="module")
def plane(dst: Path) -> Iterator[Plane]:
    p = Plane(dst)
    yield p
    p.close()


def test_full_empty_and_incompressible_files_arrive_exact(plane: Plane, dst: Path, tmp_path: Path) -> None:
    src = tmp_path / "s"
    (src / "sub").mkdir(parents=True)
    (src / "notes.txt").write_bytes(text(3 << 20))  # three pieces and a bit
    (src / "sub" / "small.txt").write_bytes(text(5000, seed=2))
    (src / "empty").write_bytes(b"")
    (src / "random.bin").write_bytes(os.urandom(1 << 20))  # goes STORED: zstd cannot shrink it
    (src / "sub" / "one").write_bytes(b"x")
    stats, result = plane.run(src, b"full", streams=2, compress=ON, compress_level=1)
    assert isinstance(result, TransferStats), result
    assert not diff_trees(snapshot(src), snapshot(dst / "full"))
    raw = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    assert stats.bytes_done == raw
    # The text shrinks about threefold; the random MiB costs at most its framing.
    assert stats.wire_bytes < (1 << 20) + (3 << 20) // 2, (stats.wire_bytes, raw)
    again, _ = plane.run(src, b"full", compress=ON)
    assert again.bytes_done == 0


def test_delta_literals_travel_compressed(plane: Plane, dst: Path, tmp_path: Path) -> None:
    src = tmp_path / "s"
    src.mkdir()
    big = src / "big.log"
    big.write_bytes(text(8 << 20, seed=3))
    plane.run(src, b"delta", streams=2, compress=ON)
    rewrite(big, 3 << 20, text(1 << 20, seed=4))  # one MiB changed in the middle, size unchanged
    stats, result = plane.run(src, b"delta", streams=2, compress=ON)
    assert isinstance(result, TransferStats), result
    assert (dst / "delta" / "big.log").read_bytes() == big.read_bytes()
    assert (1 << 20) <= stats.bytes_done <= (1 << 20) + 2 * (128 << 10), stats.bytes_done
    # Block hashes (~3 KiB) plus the changed MiB, compressed: well under the raw literal.
    assert stats.wire_bytes < (1 << 20) * 3 // 4, stats.wire_bytes


def test_sparse_file_keeps_its_holes(plane: Plane, dst: Path, tmp_path: Path) -> None:
    src = tmp_path / "s"
    src.mkdir()
    with open(src / "sparse.img", "wb") as f:  # 16 MiB with two data segments
        f.write(text(1 << 20, seed=5))
        f.seek(10 << 20)
        f.write(text(1 << 20, seed=6))
        f.truncate(16 << 20)
    stats, result = plane.run(src, b"sparse", compress=ON)
    assert isinstance(result, TransferStats), result
    copy = dst / "sparse" / "sparse.img"
    assert not diff_trees(snapshot(src), snapshot(dst / "sparse"))
    assert stats.bytes_done == 2 << 20  # the holes never travel
    assert stats.wire_bytes < 3 << 19  # and the data segments went compressed
    assert copy.stat().st_blocks * 512 <= 4 << 20  # and stay holes


def bomb_frames() -> list[tuple[str, bytes]]:
    """ZDATA payloads a hostile sender might try: 100 MiB of zeros in 3 KiB, declared or not."""
    declared = zstandard.ZstdCompressor(level=3).compress(bytes(100 << 20))
    cobj = zstandard.ZstdCompressor(level=3, write_content_size=False).compressobj()
    undeclared = cobj.compress(bytes(8 << 20)) + cobj.flush()
    return [("declared", bytes([compress.ZSTD]) + declared), ("undeclared", bytes([compress.ZSTD]) + undeclared)]


@pytest.mark.parametrize("name,payload", bomb_frames(), ids=[n for n, _ in bomb_frames()])
def test_a_decompression_bomb_is_refused_and_leaves_nothing(plane: Plane, dst: Path, name: str,
                                                           payload: bytes) -> None:
    opts = JobOptions(compress=ON)
    job, ticket, done = plane.grant(b"bomb-" + name.encode(), opts)
    sock = socket.create_connection(plane.server.address, timeout=10)
    try:
        ch = Channel(sock)
        ch.send(fr.encode_hello(Hello(job, 1, ticket)))
        assert ch.recv_frame()[0] is fr.T.ACCEPT
        size = 100 << 20
        ch.send(ec.encode_entries([Entry(Kind.DIR, b"", 0o755, 10**18), Entry(Kind.FILE, b"f", 0o644, 10**18, size)]))
        assert fr.decode_need(ch.recv_frame()[1]) == [1]
        # FILE frames are accepted on the control connection too: the whole file as one compressed range.
        ch.send(fr.encode_file(FileHead(1, 0, size, size, 10**18, 0o644), fr.T.ZFILE) + fr.frame(fr.T.ZDATA, payload))
        assert done.wait(10)
    finally:
        sock.close()
    err = plane.results[-1]
    assert isinstance(err, ProtocolError), err
    assert "refused a compressed piece for hostB:/dst" in str(err)
    assert "decompression bomb" in str(err)
    assert not (dst / f"bomb-{name}").exists() or not any((dst / f"bomb-{name}").iterdir())


def test_unpacker_bounds_each_piece_by_what_is_left() -> None:
    packer, unpacker = compress.Packer(3), compress.Unpacker()
    piece = text(1000)
    wire = packer.pack(piece)
    payload = wire[fr.HEAD.size :]
    assert unpacker.unpack(payload, 1000, "f") == piece
    with pytest.raises(ProtocolError, match="would unpack to 1000 bytes where at most 999 may come"):
        unpacker.unpack(payload, 999, "f")
    stored = packer.pack(os.urandom(100))[fr.HEAD.size :]
    assert stored[0] == compress.STORED
    with pytest.raises(ProtocolError, match="stored piece of 100 bytes"):
        unpacker.unpack(stored, 50, "f")
    with pytest.raises(ProtocolError, match="unknown method 7"):
        unpacker.unpack(b"\x07abc", 50, "f")
    with pytest.raises(ProtocolError, match="not a zstd frame"):
        unpacker.unpack(bytes([compress.ZSTD]) + b"garbage!", 50, "f")


def test_measured_rate_is_plausible() -> None:
    rate = compress.measure_rate()
    assert 1 << 20 < rate < 100 << 30  # a core compresses text faster than 1 MiB/s, slower than 100 GiB/s


@settings(max_examples=150, deadline=None)
@given(body=st.binary(max_size=64), method=st.sampled_from([compress.STORED, compress.ZSTD]),
       left=st.integers(min_value=1, max_value=1 << 21), real=st.booleans())
def test_any_piece_unpacks_within_its_bound_or_is_refused(body: bytes, method: int, left: int, real: bool) -> None:
    """Whatever a peer sends as a ZDATA payload (garbage, or a real frame of some size), the receiver gets at
    most min(left, PIECE) bytes, or a ProtocolError."""
    if real and method == compress.ZSTD:
        body = zstandard.ZstdCompressor().compress(body * 4096)  # up to 256 KiB declared
    try:
        out = compress.Unpacker().unpack(bytes([method]) + body, left, "f")
    except ProtocolError:
        return
    assert 0 < len(out) <= min(left, compress.PIECE)
