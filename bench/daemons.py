"""Long-lived processes the benchmark starts: zc-controller, the two zc-agents, and an rsync daemon.

Each runs in its own session, so a Ctrl-C in the terminal reaches only the benchmark, which then stops
them in order (SIGTERM, wait, SIGKILL as a last resort).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent  # the venv's console scripts live next to its python


def compile_bytecode() -> None:
    """Write the bytecode of zcrepl's modules, as ``pip install`` does for a wheel. An editable install run with
    PYTHONDONTWRITEBYTECODE=1 (this machine's sessions set it) would compile every module it imports at each
    start: ~25 ms of CPU per zc-ctl (~30 modules), which an installed zcrepl never spends. (py_compile writes
    regardless of that variable; the interpreter still reads what is there.)"""
    import compileall

    import zcrepl.cli

    compileall.compile_dir(str(Path(zcrepl.cli.__file__).parent.parent), quiet=1)  # every zcrepl package


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Daemon:
    """One background process, logging to a file; optionally ready when ``ready_file`` appears."""

    def __init__(self, name: str, argv: list[str], log: Path, ready_file: Path | None = None) -> None:
        self.name, self.argv, self.log, self.ready_file = name, argv, log, ready_file
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready: dict[str, Any] = {}

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} is not running"
        return self.proc.pid

    def start(self, timeout: float = 30.0, ready: Any = None) -> Daemon:
        if self.ready_file is not None:
            self.ready_file.unlink(missing_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        check = ready or (lambda: self.ready_file is None or self.ready_file.exists())
        deadline = time.monotonic() + timeout
        while not check():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
                raise RuntimeError(f"{self.name} did not start (see {self.log}):\n{tail}")
            time.sleep(0.05)
        if self.ready_file is not None:
            self.ready = json.loads(self.ready_file.read_text())
        return self

    def stop(self, timeout: float = 15.0) -> None:
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            print(f"bench: {self.name} ignored SIGTERM for {timeout:.0f}s; killing it", file=sys.stderr)
            p.kill()
            p.wait()


class ZcCluster:
    """A zc-controller (up for the whole benchmark) and agents hostA (exports ``src``) and hostB (exports
    ``dst``), restarted per workload so each workload gets its own VmHWM."""

    def __init__(self, run_dir: Path, src: Path, dst: Path) -> None:
        self.run_dir, self.src, self.dst = run_dir, src, dst
        self.addr = f"127.0.0.1:{free_port()}"
        self.controller = Daemon("zc-controller", [
            str(BIN / "zc-controller"), "--listen", self.addr, "--state-dir", str(run_dir / "zc-state"),
            "--ready-file", str(run_dir / "controller.json"), "--log-level", "info", "--auto-pki",
            "--enroll-listen", "127.0.0.1:0",
            # The reference tools just loaded the machine; a benchmark measures speed, not the load policy.
            "--max-cpu-percent", "100", "--max-load-per-core", "1000", "--max-disk-busy-percent", "100",
            "--max-net-percent", "100", "--high-cpu-percent", "100", "--high-load-per-core", "1000",
            "--high-disk-busy-percent", "100", "--high-net-percent", "100",
        ], run_dir / "controller.log", run_dir / "controller.json")
        self.agents: dict[str, Daemon] = {}

    def start_controller(self) -> None:
        """Start it secure by default (its own CA); every zc-ctl the benchmark runs inherits the admin
        certificate through ZC_CA/ZC_CERT/ZC_KEY, and the agents get certificates from the same CA."""
        for var in ("ZC_CA", "ZC_CERT", "ZC_KEY"):  # an earlier cluster's admin certificate is not this daemon's
            os.environ.pop(var, None)
        compile_bytecode()
        self.controller.start()
        self.pki = self.run_dir / "zc-state" / "pki"
        os.environ.update(ZC_CA=str(self.pki / "ca.pem"), ZC_CERT=str(self.pki / "admin.pem"),
                          ZC_KEY=str(self.pki / "admin.key"))

    def _tls(self, name: str) -> list[str]:
        from zcrepl.core import pki

        cert, key = pki.issue_files(self.pki, "agent", name)
        return ["--ca", str(self.pki / "ca.pem"), "--cert", str(cert), "--key", str(key)]

    def start_agents(self) -> None:
        for name, export in (("hostA", self.src), ("hostB", self.dst)):
            export.mkdir(parents=True, exist_ok=True)
            self.agents[name] = Daemon(name, [
                str(BIN / "zc-agent"), "--name", name, "--controller", self.addr, "--export", str(export),
                "--listen", "127.0.0.1:0", "--data-listen", "127.0.0.1:0",
                "--ready-file", str(self.run_dir / f"{name}.json"), "--log-level", "info", *self._tls(name),
            ], self.run_dir / f"{name}.log", self.run_dir / f"{name}.json").start()
        deadline = time.monotonic() + 30
        while not self._online():
            if time.monotonic() > deadline:
                raise RuntimeError(f"agents did not come online; see {self.run_dir}/host*.log")
            time.sleep(0.2)

    def _online(self) -> bool:
        p = subprocess.run([str(BIN / "zc-ctl"), "--controller", self.addr, "agents", "--json"],
                           capture_output=True, timeout=30)
        if p.returncode != 0:
            return False
        live = {a["name"]: a for a in json.loads(p.stdout) if a["online"]}
        return all(n in live and live[n]["pid"] == d.pid for n, d in self.agents.items())

    def pid(self, name: str) -> int:
        return self.agents[name].pid

    def stop_agents(self) -> None:
        for d in self.agents.values():
            d.stop()
        self.agents.clear()

    def stop(self) -> None:
        self.stop_agents()
        self.controller.stop()


class RsyncDaemon:
    """``rsync --daemon --no-detach`` on 127.0.0.1 with one writable module ``mod`` at ``path``, configured
    like baselines.md, plus ``munge symlinks = no`` so symlink targets arrive unchanged (with ``use chroot
    = no`` rsync would otherwise prefix them with /rsyncd-munged/)."""

    def __init__(self, run_dir: Path, path: Path) -> None:
        self.port = free_port()
        self.path = path
        conf = run_dir / "rsyncd.conf"
        ids = "uid = root\ngid = root\n" if os.geteuid() == 0 else ""  # as baselines.md, when we may
        conf.write_text(
            f"address = 127.0.0.1\nport = {self.port}\nuse chroot = no\n{ids}"
            f"log file = {run_dir / 'rsyncd.log'}\n\n"
            f"[mod]\n  path = {path}\n  read only = no\n  munge symlinks = no\n"
        )
        self.daemon = Daemon("rsync-daemon", ["rsync", "--daemon", "--no-detach", f"--config={conf}"],
                             run_dir / "rsyncd.out")

    @property
    def pid(self) -> int:
        return self.daemon.pid

    def url(self, rel: str) -> str:
        return f"rsync://127.0.0.1:{self.port}/mod/{rel}/"

    def start(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return True
            except OSError:
                return False

        self.daemon.start(ready=listening)

    def stop(self) -> None:
        self.daemon.stop()
