"""Two Syncthing instances on loopback sharing one folder (send-only -> receive-only), for bench/watch.py.

Everything Syncthing would do on a real network is switched off (global and local discovery, relays, NAT,
usage reporting, upgrades); each instance listens on its own loopback port and knows the other's address.
The folder keeps Syncthing's defaults except ``fsWatcherDelayS`` when asked (its default is 10 s; 1 s is
the smallest it takes).
"""

from __future__ import annotations

import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

from daemons import Daemon, free_port

_OFF = {"globalAnnounceEnabled": "false", "localAnnounceEnabled": "false", "relaysEnabled": "false",
        "natEnabled": "false", "urAccepted": "-1", "startBrowser": "false", "autoUpgradeIntervalH": "0",
        "crashReportingEnabled": "false"}


def _generate(home: Path) -> str:
    out = subprocess.run(["syncthing", "generate", f"--home={home}", "--no-default-folder"], capture_output=True,
                         text=True, timeout=60, check=True)
    m = re.search(r"Device ID: (\S+)", out.stdout + out.stderr)
    if m is None:
        raise RuntimeError(f"syncthing generate printed no device ID: {out.stdout}{out.stderr}")
    return m.group(1)


def _configure(home: Path, me: str, peer: str, port: int, peer_port: int, folder: Path, kind: str,
               delay: float | None) -> None:
    path = home / "config.xml"
    tree = ET.parse(path)
    root = tree.getroot()
    gui = root.find("gui")
    assert gui is not None
    addr = gui.find("address")
    assert addr is not None
    addr.text = f"127.0.0.1:{free_port()}"
    opts = root.find("options")
    assert opts is not None
    for name, value in {**_OFF, "listenAddress": f"tcp://127.0.0.1:{port}"}.items():
        el = opts.find(name)
        if el is None:
            el = ET.SubElement(opts, name)
        el.text = value
    dev = ET.SubElement(root, "device", id=peer, name="peer", compression="metadata", introducer="false")
    ET.SubElement(dev, "address").text = f"tcp://127.0.0.1:{peer_port}"
    attrs = {"id": "bench", "label": "bench", "path": str(folder), "type": kind, "rescanIntervalS": "3600",
             "fsWatcherEnabled": "true", "fsWatcherDelayS": str(int(delay)) if delay is not None else "10"}
    f = ET.Element("folder", attrs)
    for d in (me, peer):
        ET.SubElement(f, "device", id=d)
    root.insert(0, f)
    tree.write(path)


class Syncthing:
    def __init__(self, run: Path, src: Path, dst: Path, delay: float | None) -> None:
        self.name = "Syncthing (default: watch delay 10 s)" if delay is None else f"Syncthing (watch delay {delay:g} s)"
        self.src, self.dst = src, dst
        a, b = run / "st-a", run / "st-b"
        ida, idb = _generate(a), _generate(b)
        pa, pb = free_port(), free_port()
        _configure(a, ida, idb, pa, pb, src, "sendonly", delay)
        _configure(b, idb, ida, pb, pa, dst, "receiveonly", delay)
        for folder in (src, dst):
            (folder / ".stfolder").mkdir(exist_ok=True)
        self.daemons = [Daemon(f"syncthing-{n}", ["syncthing", "serve", f"--home={h}", "--no-browser", "--no-restart",
                                                  f"--logfile={run}/syncthing-{n}.log"], run / f"syncthing-{n}.out")
                        for n, h in (("a", a), ("b", b))]

    def start(self) -> None:
        (self.src / "syncthing-ready").write_bytes(b"x")
        self.daemons[0].start()
        self.daemons[1].start(ready=lambda: (self.dst / "syncthing-ready").exists(), timeout=180)

    def stop(self) -> None:
        for d in self.daemons:
            d.stop()
