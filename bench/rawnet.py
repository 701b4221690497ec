"""The raw limit: ``os.sendfile`` from this process to a receiver process on loopback that stores the bytes
with ``recv_into`` a reused 1 MiB buffer + ``os.write`` (baselines.md 1b, "sendfile -> recv_into + write").

Run as a script it is the receiver: ``python rawnet.py DSTFILE`` prints its port, accepts one connection,
reads an 8-byte length and the bytes, acks with one byte once the last write() returned, then waits for
EOF so the parent can read its CPU from /proc before it exits.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from measure import Run, proc_cpu, thread_cpu

BUF = 1 << 20


def receive(dst: str) -> int:
    with socket.create_server(("127.0.0.1", 0)) as srv:
        print(srv.getsockname()[1], flush=True)
        conn, _ = srv.accept()
    with conn:
        head = b""
        while len(head) < 8:
            chunk = conn.recv(8 - len(head))
            if not chunk:
                return 1
            head += chunk
        left = int.from_bytes(head, "little")
        buf = bytearray(BUF)
        mv = memoryview(buf)
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            while left:
                n = conn.recv_into(mv, min(left, BUF))
                if n == 0:
                    return 1
                written = 0
                while written < n:
                    written += os.write(fd, mv[written:n])
                left -= n
        finally:
            os.close(fd)
        conn.sendall(b"k")
        conn.recv(1)  # EOF from the parent
    return 0


def send(src: Path, dst: Path, workload: str) -> Run:
    """One timed transfer of ``src`` to a fresh receiver writing ``dst``. Start-up is not timed; wall time
    runs from the first byte sent until the receiver's ack."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    recv = subprocess.Popen([sys.executable, __file__, str(dst)], stdout=subprocess.PIPE)
    try:
        assert recv.stdout is not None
        port = int(recv.stdout.readline())
        size = src.stat().st_size
        with socket.create_connection(("127.0.0.1", port)) as sock, open(src, "rb") as f:
            r0, s0 = proc_cpu(recv.pid)[0], thread_cpu()
            t0 = time.perf_counter()
            sock.sendall(size.to_bytes(8, "little"))
            off = 0
            while off < size:
                n = os.sendfile(sock.fileno(), f.fileno(), off, size - off)
                if n == 0:
                    raise RuntimeError(f"{src} shrank while sent")
                off += n
            ok = sock.recv(1) == b"k"
            wall = time.perf_counter() - t0
            s1, r1 = thread_cpu(), proc_cpu(recv.pid)[0]
        recv.wait(30)
        ok = ok and recv.returncode == 0
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()
    return Run(workload, "raw", 0, wall, ok=ok, cpu_send=s1 - s0, cpu_recv=r1 - r0, wire_bytes=size + 8)


if __name__ == "__main__":
    sys.exit(receive(sys.argv[1]))
