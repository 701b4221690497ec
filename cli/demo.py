"""``zc-ctl demo``: a controller and two agents as real processes on loopback replicate a generated tree.

Secure the way a real cluster starts: the controller keeps its own CA (--auto-pki), each agent enrols with a
one-time join token, and every gRPC call is mutual TLS. Everything lives in a temporary directory; the
daemons are stopped with SIGTERM at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from zcrepl.cli import ctl, render
from zcrepl.cli.client import ControllerClient
from zcrepl.core.treegen import generate_tree
from zcrepl.core.trust import TlsPaths, Trust
from zcrepl.core.units import size


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn(args: list[str], ready: Path, log: Path, timeout: float = 30.0) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", *args, "--ready-file", str(ready)], stdout=out, stderr=out)
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{args[0]} did not start; see {log}")
        time.sleep(0.05)
    return proc


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _same_tree(a: Path, b: Path) -> bool:
    for dirpath, dirnames, filenames in os.walk(a):
        for name in dirnames + filenames:
            pa = Path(dirpath) / name
            pb = b / pa.relative_to(a)
            sa, sb = pa.lstat(), pb.lstat() if os.path.lexists(pb) else None
            if sb is None or (sa.st_mode, sa.st_mtime_ns) != (sb.st_mode, sb.st_mtime_ns):
                return False
            if pa.is_symlink() and os.readlink(pa) != os.readlink(pb):
                return False
            if pa.is_file() and not pa.is_symlink() and pa.read_bytes() != pb.read_bytes():
                return False
    return True


def run_demo(files: int = 2000, big_mib: int = 64, keep: bool = False, serve: bool = False) -> int:
    console = Console(highlight=False)
    base = Path(tempfile.mkdtemp(prefix="zcrepl-demo-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        src, dst = base / "hostA" / "data", base / "hostB" / "backup" / "data"
        (base / "hostB").mkdir(parents=True)
        console.print(f"[bold]zcrepl demo[/] in {base}")
        nbytes = generate_tree(src, files=files, big_bytes=big_mib << 20)
        console.print(f"generated {files} small files and a {big_mib} MiB file ({size(nbytes)}) "
                      f"in {src}")
        addr = f"127.0.0.1:{_free_port()}"
        procs.append(_spawn(["zcrepl.controller", "--listen", addr, "--state-dir", str(base / "state"),
                             "--auto-pki", "--enroll-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                             "--http-listen", "127.0.0.1:0"],
                            base / "controller.json", base / "controller.log"))
        pki_dir = base / "state" / "pki"
        tls = ["--ca", str(pki_dir / "ca.pem"), "--cert", str(pki_dir / "admin.pem"),
               "--key", str(pki_dir / "admin.key")]
        trust = Trust(TlsPaths(*tls[1::2]), kind="operator")
        with ControllerClient(addr, trust) as client:
            for name in ("hostA", "hostB"):
                token = client.create_token(name).token
                procs.append(_spawn(["zcrepl.agent", "--name", name, "--controller", addr, "--export",
                                     str(base / name), "--listen", "127.0.0.1:0", "--data-listen", "127.0.0.1:0",
                                     "--join", token, "--state-dir", str(base / f"{name}-state"),
                                     "--metrics-listen", "127.0.0.1:0"],
                                    base / f"{name}.json", base / f"{name}.log"))
            console.print(f"controller with its own CA in {pki_dir}; agents enrolled with one-time join tokens; "
                          "every call is mutual TLS")
            deadline = time.monotonic() + 20
            while sum(a.online and bool(a.health and a.health.mem_total) for a in client.agents()) < 2:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"agents did not come online; see the logs in {base}")
                time.sleep(0.1)
            metrics = ", ".join(f"{n} http://{json.loads((base / f'{n}.json').read_text())['metrics']}/metrics"
                                for n in ("controller", "hostA", "hostB"))
            console.print(f"Prometheus metrics: {metrics}")
            web = json.loads((base / "controller.json").read_text())["http_url"]
            console.print(f"web view: {web} (a certificate of the demo's own CA: accept it in the browser; "
                          "--serve keeps the cluster up afterwards)")
            console.print(f"controller on {addr}; the same as: ZC_CA={tls[1]} ZC_CERT={tls[3]} ZC_KEY={tls[5]} "
                          f"zc-ctl --controller {addr} replicate hostA:{src} hostB:{dst}")
            rc = ctl.main([*tls, "--controller", addr, "replicate", f"hostA:{src}", f"hostB:{dst}"])
            ctl.main([*tls, "--controller", addr, "agents"])
            ctl.main([*tls, "--controller", addr, "health"])
            ctl.main([*tls, "--controller", addr, "jobs"])
            job = client.jobs(limit=1)[0]
            console.print_json(json.dumps(render.job_doc(job)["progress"]))
        identical = _same_tree(src, dst)
        console.print("[green]trees identical[/]" if identical else "[red]trees differ[/]")
        if serve:
            console.print(f"serving the web view at {web} until Ctrl-C")
            signal.signal(signal.SIGTERM, _interrupt)  # a kill stops the daemons too, as Ctrl-C does
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                console.print("stopping the demo cluster")
        return rc if identical else 1
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        if keep:
            console.print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
