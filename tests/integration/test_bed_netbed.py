"""The network test bed itself: hosts reach each other only through it, cuts and link-downs behave like the real
faults, and nothing it made outlives it, even when its creator is SIGKILLed."""

from __future__ import annotations

import errno
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import netbed
import pytest
from netbed import NetBed


def _ours(tag: str) -> list[str]:
    """Namespaces and links whose name contains ``tag``."""
    names = [line.split()[0] for line in netbed.run("ip", "netns", "list").splitlines() if line.strip()]
    names += [line.split(":")[1].strip().split("@")[0] for line in netbed.run("ip", "-o", "link").splitlines()]
    return [n for n in names if tag in n]


def _connect(bed: NetBed, src: str, dst: str, port: int, timeout: float) -> str:
    """Try a TCP connection from host ``src`` to ``dst``:``port``: "ok", or the errno name it failed with."""
    code = textwrap.dedent(f"""
        import socket, sys
        s = socket.socket()
        s.settimeout({timeout})
        try:
            s.connect(({bed.ip(dst)!r}, {port}))
        except TimeoutError:
            sys.exit("timeout")
        except OSError as err:
            sys.exit(__import__("errno").errorcode[err.errno])
        print("ok")
    """)
    p = subprocess.run([*bed.exec_prefix(src), sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=30)
    return p.stdout.strip() or p.stderr.strip().splitlines()[-1]


@pytest.fixture
def listener(bed: NetBed) -> Iterator[tuple[NetBed, int]]:
    """hostA and hostB on the bed, hostB listening on a TCP port (a process in its namespace)."""
    bed.add_host("hostA")
    bed.add_host("hostB")
    port = 7999
    code = f"import socket,time\ns=socket.create_server(('0.0.0.0',{port}),backlog=64)\ntime.sleep(600)"
    server = subprocess.Popen([*bed.exec_prefix("hostB"), sys.executable, "-c", code], start_new_session=True)
    try:
        for _ in range(100):
            if _connect(bed, "hostA", "hostB", port, 1.0) == "ok":
                break
        yield bed, port
    finally:
        server.kill()
        server.wait()


def test_a_cut_makes_packets_vanish_and_heals(listener: tuple[NetBed, int]) -> None:
    bed, port = listener
    assert _connect(bed, "hostA", "hostB", port, 2.0) == "ok"
    assert _connect(bed, "operator", "hostB", port, 2.0) == "ok"
    bed.cut("hostA", "hostB")
    # Like a real cut: no error comes back, the connection attempt just never completes.
    assert _connect(bed, "hostA", "hostB", port, 1.0) == "timeout"
    assert _connect(bed, "operator", "hostB", port, 2.0) == "ok"  # other links are untouched
    bed.heal("hostA", "hostB")
    assert _connect(bed, "hostA", "hostB", port, 2.0) == "ok"


def test_a_link_down_fails_fast(listener: tuple[NetBed, int]) -> None:
    bed, port = listener
    bed.link_down("hostA")
    assert _connect(bed, "hostA", "hostB", port, 5.0) == errno.errorcode[errno.ENETUNREACH]
    bed.link_up("hostA")
    assert _connect(bed, "hostA", "hostB", port, 2.0) == "ok"


def test_everything_is_removed_after_a_failure_inside_the_bed() -> None:
    if netbed.available():
        pytest.skip(netbed.available())
    with pytest.raises(RuntimeError, match="the test failed"), NetBed() as bed:
        bed.add_host("hostA")
        bed.add_host("hostB")
        tag = bed.id
        sleeper = subprocess.Popen([*bed.exec_prefix("hostA"), "sleep", "600"], start_new_session=True)
        assert len(_ours(tag)) == 5  # bridge, two namespaces, two veths
        raise RuntimeError("the test failed")
    assert _ours(tag) == []
    assert sleeper.wait(10) == -signal.SIGKILL  # what still ran in a namespace was killed first


def test_a_bed_whose_creator_was_killed_is_swept_by_the_next(tmp_path: Path) -> None:
    if netbed.available():
        pytest.skip(netbed.available())
    tests = Path(__file__).resolve().parents[1]
    code = textwrap.dedent(f"""
        import os, signal, subprocess, sys
        sys.path.insert(0, {str(tests)!r})
        from netbed import NetBed
        bed = NetBed()
        bed.add_host("hostA")
        p = subprocess.Popen([*bed.exec_prefix("hostA"), "sleep", "600"], start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(bed.id, p.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == -signal.SIGKILL, out.stderr
    tag, orphan = out.stdout.split()
    assert len(_ours(tag)) == 3  # left behind: bridge, namespace, veth, and a process in the namespace
    with NetBed():
        assert _ours(tag) == []
    assert not _running(int(orphan))


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
