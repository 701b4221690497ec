"""Shared test helpers: a cluster of real daemon processes, tree generation and an independent tree walk.

The tree comparison deliberately uses none of zcrepl's code (os.walk + lstat + sha256).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

OLD_MTIME_NS = 946_684_800_123_456_789  # 2000-01-01, with nanoseconds


# The controller's store backends, for tests that run on both: parametrize their cluster fixture with
# ``@pytest.mark.parametrize("cluster", BACKENDS, indirect=True)`` (tests/integration/conftest.py).
BACKENDS = ("sqlite", "postgres")


def wait_for(pred: Any, timeout: float = 20.0, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Daemon:
    name: str
    argv: list[str]
    ready_file: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    ready: dict[str, Any] = field(default_factory=dict)

    def start(self, timeout: float = 20.0) -> Daemon:
        return self.spawn().wait_ready(timeout)

    def spawn(self) -> Daemon:
        """Start the process without waiting for it to serve (several daemons start side by side)."""
        self.ready_file.unlink(missing_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=log, start_new_session=True)
        finally:
            log.close()
        return self

    def wait_ready(self, timeout: float = 20.0) -> Daemon:
        def is_ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            return self.ready_file.exists()

        wait_for(is_ready, timeout, what=f"{self.name} to serve")
        self.ready = json.loads(self.ready_file.read_text())
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def send_signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc is None:
            return 0
        self.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
            raise AssertionError(f"{self.name} ignored signal {sig} for {timeout}s:\n{self.log()[-3000:]}") from None
        finally:
            self.proc = None
        return rc

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


class ClusterPKI:
    """A throwaway cluster CA in ``directory`` with certificates issued on demand (made at run time, never kept)."""

    def __init__(self, directory: Path) -> None:
        from zcrepl.core import pki

        self.dir = directory
        pki.init_ca(directory)
        self.ca = str(directory / pki.CA_FILE)
        self.crl = str(directory / pki.CRL_FILE)
        pki.write_crl(directory / pki.CRL_FILE, pki.CA.load(directory), {})

    def issue(self, kind: str, name: str, role: str = "") -> tuple[str, str]:
        """(cert path, key path) for ``kind``/``name``, issued once."""
        from zcrepl.core import pki

        cert, key = self.dir / f"{name}.pem", self.dir / f"{name}.key"
        if not cert.exists():
            pki.issue_files(self.dir, kind, name, role=role)
        return str(cert), str(key)

    def flags(self, kind: str, name: str, role: str = "") -> list[str]:
        cert, key = self.issue(kind, name, role)
        return ["--ca", self.ca, "--cert", cert, "--key", key]

    def env(self, name: str = "admin", role: str = "admin") -> dict[str, str]:
        """zc-ctl's environment for an operator certificate."""
        cert, key = self.issue("operator", name, role)
        return {"ZC_CA": self.ca, "ZC_CERT": cert, "ZC_KEY": key}

    def trust(self, kind: str = "operator", name: str = "admin", role: str = "admin") -> Any:
        from zcrepl.core.trust import TlsPaths, Trust

        cert, key = self.issue(kind, name, role if kind == "operator" else "")
        return Trust(TlsPaths(self.ca, cert, key), kind=kind)


class Cluster:
    """A controller and agents as real processes, all with mutual TLS; all ports ephemeral.

    On loopback by default; with ``bed`` (tests/netbed.py) every daemon runs on a host of its own (a network
    namespace with its own address), the controller on the bed's host "controller".
    """

    def __init__(self, base: Path, bed: Any = None, **controller_flags: Any) -> None:
        self.base = base
        self.bed = bed
        self.daemons: dict[str, Daemon] = {}
        (base / "pki").mkdir(parents=True, exist_ok=True)
        self.pki = ClusterPKI(base / "pki")
        if bed is None:
            host, self.controller_port, prefix = "127.0.0.1", free_port(), []
        else:  # a namespace of its own: any port is free there
            host, self.controller_port, prefix = bed.add_host("controller").ip, 7420, bed.exec_prefix("controller")
        self.controller_addr = f"{host}:{self.controller_port}"
        # The machine running the suite is busy by nature: the load policy is relaxed here and exercised
        # on purpose by the tests that set their own thresholds.
        flags = {"retry_base": 0.2, "retry_max": 1.0, "heartbeat_interval": 0.5, "offline_after": 3.0,
                 "max_cpu_percent": 100, "max_load_per_core": 1000, "max_disk_busy_percent": 100,
                 "max_net_percent": 100, "high_cpu_percent": 100, "high_load_per_core": 1000,
                 "high_disk_busy_percent": 100, "high_net_percent": 100, **controller_flags}
        argv = [*prefix, sys.executable, "-m", "zcrepl.controller", "--listen", self.controller_addr,
                "--state-dir", str(base / "state"), "--ready-file", str(base / "controller.json"),
                "--log-level", "debug", "--enroll-listen", f"{host}:0", "--crl", self.pki.crl,
                "--ca-key", str(base / "pki" / "ca.key"), *self.pki.flags("controller", "controller")]
        for k, v in flags.items():
            argv += [f"--{k.replace('_', '-')}", str(v)]
        self.daemons["controller"] = Daemon("controller", argv, base / "controller.json", base / "controller.log")

    @property
    def controller(self) -> Daemon:
        return self.daemons["controller"]

    def add_agent(self, name: str, *exports: Path, tls: list[str] | None = None,
                  flags: tuple[str, ...] = ()) -> Daemon:
        """A zc-agent; ``tls`` replaces its TLS flags (default: a certificate of the cluster's CA), ``flags``
        are added. On a bed it runs on a host of its own and listens on every address there, so what it
        advertises is its own address as seen from the controller."""
        for e in exports:
            e.mkdir(parents=True, exist_ok=True)
        if self.bed is None:
            prefix, listen = [], "127.0.0.1:0"
        else:
            self.bed.add_host(name)
            prefix, listen = self.bed.exec_prefix(name), "0.0.0.0:0"
        argv = [*prefix, sys.executable, "-m", "zcrepl.agent", "--name", name, "--controller", self.controller_addr,
                "--listen", listen, "--data-listen", listen,
                "--ready-file", str(self.base / f"{name}.json"), "--log-level", "debug",
                "--state-dir", str(self.base / f"{name}.state"),  # before tls: a --state-dir there wins
                *(self.pki.flags("agent", name) if tls is None else tls), *flags]
        for e in exports:
            argv += ["--export", str(e)]
        d = Daemon(name, argv, self.base / f"{name}.json", self.base / f"{name}.log")
        self.daemons[name] = d
        return d

    def agents_online(self, *names: str) -> bool:
        """Whether the controller calls all of ``names`` online (asked in-process: a zc-ctl per poll would cost
        the starting daemons a core)."""
        from zcrepl.core.errors import Unavailable

        try:
            with self.client() as c:
                online = {a.info.name for a in c.agents() if a.online}
        except Unavailable:
            return False
        return set(names) <= online

    def wait_online(self, *names: str, timeout: float = 20.0) -> None:
        wait_for(lambda: self.agents_online(*names), timeout, interval=0.2, what=f"agents {names} online")

    def ctl(self, *args: str, timeout: float = 120.0) -> tuple[int, str, str]:
        p = subprocess.run([sys.executable, "-m", "zcrepl.cli.ctl", "--controller", self.controller_addr,
                            *args], capture_output=True, timeout=timeout,
                           env={**os.environ, "COLUMNS": "200", **self.pki.env()})
        return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")

    def job(self, job_id: int) -> dict[str, Any]:
        """The job as ``zc-ctl job --json`` prints it, fetched in-process (cheap enough to poll)."""
        from zcrepl.cli.render import job_doc

        with self.client() as c:
            return job_doc(c.job(job_id))

    def client(self) -> Any:
        """An admin ControllerClient (in-process)."""
        from zcrepl.cli.client import ControllerClient

        return ControllerClient(self.controller_addr, self.pki.trust())

    def close(self) -> None:
        daemons = list(reversed(self.daemons.values()))
        for d in daemons:  # the agents stop side by side (a second SIGTERM only sets the same event again)
            if d.name != "controller":
                d.send_signal(signal.SIGTERM)
        for d in daemons:
            try:
                d.stop()
            except AssertionError:
                d.kill()


@contextmanager
def running(c: Cluster, a: Path | None = None, b: Path | None = None) -> Iterator[Cluster]:
    """``c`` started: its controller, then agents hostA and hostB (exporting ``a`` and ``b``, by default
    base/a and base/b) started side by side and online; closed on the way out, whatever happened. For the
    cluster fixtures: ``with running(Cluster(base)) as c: yield c``."""
    try:
        c.controller.start()
        agents = [c.add_agent("hostA", a or c.base / "a").spawn(), c.add_agent("hostB", b or c.base / "b").spawn()]
        for d in agents:
            d.wait_ready()
        c.wait_online("hostA", "hostB")
        yield c
    finally:
        c.close()


BedCluster = Callable[..., Cluster]
"""The make_bed_cluster fixture: ``(hosts=("hostA", "hostB"), agent_flags=(), **controller_flags) -> Cluster``."""


# -- trees ------------------------------------------------------------------------------------------
ODD_NAMES = [b"sp ace", b"new\nline", "ünïcödé-名前".encode(), b"bad\xff\xfeutf8", b"-dash", b"tab\tx",
             b"back\\slash", b"quote\"'", b"a" * 200]


def rewrite(path: Path, offset: int, data: bytes) -> None:
    """Overwrite ``data`` at ``offset`` in place (same size) and move the mtime a second on, as an editor would."""
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def write_file(path: Path, data: bytes, mode: int = 0o644, mtime_ns: int = OLD_MTIME_NS) -> None:
    path.write_bytes(data)
    os.chmod(path, mode)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def make_tree(root: Path, *, files: int = 1000, big: int = 0, seed: int = 7) -> None:
    """Nested dirs, many small files, odd names, exec bits, old mtimes, symlinks (dangling too), empties."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    broot = os.fsencode(root)
    dirs = [b""]
    for i in range(max(1, files // 25)):
        parent = rng.choice(dirs)
        d = (parent + b"/" if parent else b"") + f"d{i:03d}".encode()
        os.mkdir(os.path.join(broot, d))
        dirs.append(d)
    for i in range(files):
        d = rng.choice(dirs)
        name = f"f{i:05d}.dat".encode()
        p = os.path.join(broot, d, name)
        size = rng.choice([0, 1, 100, 4096, 4097, 65536, rng.randrange(200_000)])
        with open(p, "wb") as f:
            f.write(rng.randbytes(size))
        mode = rng.choice([0o644, 0o600, 0o755, 0o640])
        os.chmod(p, mode)
        mt = OLD_MTIME_NS + rng.randrange(10**15)
        os.utime(p, ns=(mt, mt))
    for name in ODD_NAMES:
        p = os.path.join(broot, name)
        with open(p, "wb") as f:
            f.write(name * 3)
        os.utime(p, ns=(OLD_MTIME_NS, OLD_MTIME_NS))
    os.mkdir(os.path.join(broot, b"odd \xff dir\nx"))
    with open(os.path.join(broot, b"odd \xff dir\nx", b"inner \xfe"), "wb") as f:
        f.write(b"inner")
    os.makedirs(os.path.join(broot, b"empty/nested-empty"))
    open(os.path.join(broot, b"empty-file"), "wb").close()
    os.symlink(b"d000", os.path.join(broot, b"link-to-dir"))
    os.symlink(b"empty-file", os.path.join(broot, b"link-to-file"))
    os.symlink(b"does/not/exist", os.path.join(broot, b"dangling"))
    os.symlink(b"/etc/passwd", os.path.join(broot, b"absolute-link"))
    os.symlink(b"\xff\xfe-target", os.path.join(broot, b"link \xff odd"))
    exe = os.path.join(broot, b"run.sh")
    with open(exe, "wb") as f:
        f.write(b"#!/bin/sh\necho hi\n")
    os.chmod(exe, 0o755)
    os.mkdir(os.path.join(broot, b"ro-dir"), 0o555)
    if big:
        with open(os.path.join(broot, b"big.bin"), "wb") as f:
            chunk = rng.randbytes(1 << 20)
            for i in range(big >> 20):
                f.write(bytes([i & 0xFF]) + chunk[1:])
    # set directory mtimes last, after their contents
    for d in sorted(dirs, key=len, reverse=True):
        os.utime(os.path.join(broot, d), ns=(OLD_MTIME_NS, OLD_MTIME_NS + len(d)))
    os.symlink(b"nowhere", os.path.join(broot, b"d000", b"sub-dangling"))
    os.utime(os.path.join(broot, b"d000", b"sub-dangling"), ns=(OLD_MTIME_NS, OLD_MTIME_NS + 5),
             follow_symlinks=False)


def snapshot(root: Path, content: bool = True) -> dict[bytes, tuple[Any, ...]]:
    """Independent walk: path -> (type, mode, mtime_ns, size, sha256 | link target)."""
    broot = os.fsencode(root)
    out: dict[bytes, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(broot):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, broot)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", st.st_mtime_ns, os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
            elif stat.S_ISREG(st.st_mode):
                digest = hashlib.sha256(Path(os.fsdecode(full)).read_bytes()).hexdigest() if content else ""
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_size, digest)
            else:
                out[rel] = ("special", stat.S_IFMT(st.st_mode))
    st = os.lstat(broot)
    out[b"."] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
    return out


def remove_deep(path: Path) -> None:
    """Remove a tree of any depth (pytest's own clean-up recurses once per level and gives up at ~1,000)."""
    subprocess.run(["rm", "-rf", "--", str(path)], check=True, timeout=120)


def diff_trees(a: dict[bytes, Any], b: dict[bytes, Any]) -> list[str]:
    problems = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            problems.append(f"{k!r}: src={a.get(k)} dst={b.get(k)}")
    return problems


# -- a fake agent: speaks the controller stream by hand, to act as a hostile source ------------------
class FakeAgent:
    """Registers like a zc-agent and records the orders it gets; it never moves data by itself."""

    def __init__(self, controller: str, name: str, exports: tuple[bytes, ...] = (b"/evil",),
                 pki: ClusterPKI | None = None, cert_name: str = "") -> None:
        import queue as _queue
        import threading as _threading

        import grpc

        from zcrepl.proto import controller_pb2 as cpb
        from zcrepl.proto import controller_pb2_grpc
        from zcrepl.proto import types_pb2 as tpb

        self.cpb = cpb
        self.orders: _queue.Queue[Any] = _queue.Queue()
        self._out: _queue.Queue[Any] = _queue.Queue()
        self._stop = _threading.Event()
        from zcrepl.proto.channels import channel

        self._channel = channel(controller, pki.trust("agent", cert_name or name) if pki else None)
        stub = controller_pb2_grpc.ControllerStub(self._channel)
        info = tpb.AgentInfo(name=name, grpc_address="127.0.0.1:1", data_address="127.0.0.1:1", exports=list(exports))
        self._out.put(cpb.AgentMessage(register=cpb.Register(info=info)))

        def requests() -> Any:
            while True:
                m = self._out.get()
                if m is None:
                    return
                yield m

        self._call = stub.Connect(requests())

        def read() -> None:
            try:
                for m in self._call:
                    self.orders.put(m)
            except grpc.RpcError as err:
                self.orders.put(err)  # next_order raises it: how the controller ended the stream

        def beat() -> None:
            while not self._stop.wait(0.3):
                self._out.put(cpb.AgentMessage(heartbeat=cpb.Heartbeat(health=tpb.HostHealth(cpu_count=1))))

        self._threads = [_threading.Thread(target=read, daemon=True), _threading.Thread(target=beat, daemon=True)]
        for t in self._threads:
            t.start()

    def next_order(self, kind: str, timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            m = self.orders.get(timeout=max(0.01, deadline - time.monotonic()))
            if isinstance(m, Exception):
                raise m
            if m.WhichOneof("kind") == kind:
                return getattr(m, kind)

    def close(self) -> None:
        self._stop.set()
        self._out.put(None)
        self._call.cancel()
        for t in self._threads:
            t.join(5)
        self._channel.close()


# A default ACL granting the owner read/write only, nothing to group and other (posix_acl_xattr format:
# version 2, then (tag, perm, id) entries: USER_OBJ, GROUP_OBJ, OTHER).
OWNER_ONLY_ACL = struct.pack("<I", 2) + b"".join(
    struct.pack("<HHI", tag, perm, 0xFFFFFFFF) for tag, perm in ((0x01, 6), (0x04, 0), (0x20, 0)))


def set_default_acl(path: Path) -> None:
    try:
        os.setxattr(path, "system.posix_acl_default", OWNER_ONLY_ACL)
    except OSError as err:
        if err.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            pytest.skip("no POSIX ACLs on this filesystem")
        raise
