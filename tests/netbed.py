"""A test bed of real hosts on one machine: a network namespace per host on a Linux bridge.

Each host gets its own namespace (``zcbed-<pid>-<bed>-<host>``) joined to a bridge by a veth pair, and its own
address in a /24 of 10.0.0.0/8 chosen at random among those unused on this machine; the process that builds
the bed (the operator's host: pytest, zc-ctl) gets the subnet's ``.1`` on the bridge itself. A daemon runs on
a host with ``ip netns exec NS ...`` (:meth:`NetBed.exec_prefix`), which execs, so its pid is the daemon's.

Links between hosts:

- :meth:`NetBed.shape` limits what one host sends to another (an htb class per destination, selected by a
  ``u32 match ip dst`` filter, on the source's interface; this kernel has htb and tbf, no netem).
- :meth:`NetBed.cut` makes the packets between two hosts vanish, as on a real cut: each end gets a static
  neighbour entry sending the other's address to a MAC that no port has, so frames are dropped by the bridge
  and the peers. Established connections stall until a timeout, new ones wait for their connect timeout.
  (A blackhole route is not a cut for new connections: the kernel fails a local ``connect()`` towards it at
  once with EINVAL.) :meth:`NetBed.heal` restores the link.
- :meth:`NetBed.link_down` takes a host's interface down: every peer of it fails fast (no route).

Every name carries the pid of its creator, so several sessions may run beds at once, and a bed whose creator
died (SIGKILL, a crashed run) is removed by the next one (:func:`sweep_stale`). :meth:`NetBed.close` kills
what still runs in its namespaces, then removes every link, namespace and the bridge, even after a failure.
Needs root and iproute2.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import os
import random
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

NS_PREFIX = "zcbed-"
BRIDGE_PREFIX = "zb"
VETH_PREFIX = "zv"
OPERATOR = "operator"  # the bed's name for the creating process's own host (the root namespace)
# Locally administered and never assigned to an interface: frames sent to it reach nobody.
VANISH_MAC = "02:00:5e:00:de:ad"
_STALE_NS = re.compile(r"^zcbed-(\d+)-")
_STALE_LINK = re.compile(r"^z[bv](\d+)-")
_beds = itertools.count(1)


class BedError(RuntimeError):
    """An ``ip`` or ``tc`` command failed; the message has the command and its error output."""


def available() -> str:
    """'' when this process can build a bed, else why not (a reason for pytest.skip)."""
    if os.geteuid() != 0:
        return "the network test bed needs root (network namespaces, veth pairs, a bridge)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"the network test bed needs {tool} (iproute2)"
    return ""


def run(*argv: str, ns: str = "", check: bool = True) -> str:
    """``ip``/``tc`` with ``-n NS`` when given; BedError with the command and stderr on failure."""
    cmd = [argv[0], *(["-n", ns] if ns else []), *argv[1:]]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and p.returncode != 0:
        raise BedError(f"{' '.join(cmd)}: {p.stderr.strip() or p.stdout.strip()} (exit {p.returncode})")
    return p.stdout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_namespace_processes(ns: str) -> None:
    """SIGKILL whatever still runs in ``ns`` (daemons of a test that failed before stopping them)."""
    for _ in range(50):
        pids = [int(p) for p in run("ip", "netns", "pids", ns, check=False).split()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def sweep_stale() -> list[str]:
    """Remove namespaces, bridges and veths of beds whose creating process is gone; returns their names."""
    removed: list[str] = []
    for line in run("ip", "netns", "list", check=False).splitlines():
        name = line.split()[0] if line.split() else ""
        m = _STALE_NS.match(name)
        if m and not _alive(int(m.group(1))):
            kill_namespace_processes(name)
            run("ip", "netns", "del", name, check=False)
            removed.append(name)
    for line in run("ip", "-o", "link", "show", check=False).splitlines():
        parts = line.split(":")
        if len(parts) < 2:
            continue
        name = parts[1].strip().split("@")[0]
        m = _STALE_LINK.match(name)
        if m and not _alive(int(m.group(1))):
            run("ip", "link", "del", name, check=False)
            removed.append(name)
    return removed


def _used_subnets() -> list[ipaddress.IPv4Network]:
    """Networks of this machine's addresses and of its routes narrower than /16 (a broad route such as
    10.0.0.0/8 via a gateway does not stop a more specific /24 on a local bridge from working)."""
    out = run("ip", "-o", "-4", "addr", "show", check=False) + run("ip", "-4", "route", "show", check=False)
    used = []
    for word in re.findall(r"\b\d+\.\d+\.\d+\.\d+/\d+\b", out):
        net = ipaddress.IPv4Network(word, strict=False)
        if net.prefixlen >= 16:
            used.append(net)
    return used


def free_subnet(rng: random.Random | None = None) -> ipaddress.IPv4Network:
    """A random 10.x.y.0/24 that no address or route of this machine overlaps."""
    rng = rng or random.Random()
    used = _used_subnets()
    for _ in range(1000):
        net = ipaddress.IPv4Network(f"10.{rng.randrange(64, 255)}.{rng.randrange(256)}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    raise BedError("no free 10.x.y.0/24 subnet found for the test bed")


@dataclass
class Host:
    name: str
    ns: str  # "" for the operator's host (the root namespace)
    ip: str
    veth: str  # root-side end of its veth pair ("" for the operator)
    dev: str = "eth0"  # the interface inside its namespace
    shaped: dict[str, int] = field(default_factory=dict)  # destination host -> htb class minor


class NetBed:
    """The bridge and the hosts on it; a context manager that removes everything it made."""

    def __init__(self, subnet: str = "") -> None:
        problem = available()
        if problem:
            raise BedError(problem)
        sweep_stale()
        self.pid = os.getpid()
        self.id = f"{self.pid}-{next(_beds):x}"
        self.bridge = f"{BRIDGE_PREFIX}{self.id}"
        self.subnet = ipaddress.IPv4Network(subnet) if subnet else free_subnet()
        self.hosts: dict[str, Host] = {}
        self._made: list[tuple[str, str]] = []  # ("link"|"ns", name), in creation order
        self._closed = False
        if len(self.bridge) > 15:
            raise BedError(f"bridge name {self.bridge} is longer than 15 characters")
        try:
            run("ip", "link", "add", self.bridge, "type", "bridge")
            self._made.append(("link", self.bridge))
            run("ip", "addr", "add", f"{self._addr(1)}/24", "dev", self.bridge)
            run("ip", "link", "set", self.bridge, "up")
        except BaseException:
            self.close()
            raise
        self.hosts[OPERATOR] = Host(OPERATOR, "", self._addr(1), "", self.bridge)

    def _addr(self, n: int) -> str:
        return str(self.subnet.network_address + n)

    # -- hosts --------------------------------------------------------------------------------------
    def add_host(self, name: str) -> Host:
        """A namespace with its own address (``.10`` onwards) on the bridge; returns it if it exists."""
        if name in self.hosts:
            return self.hosts[name]
        index = len(self.hosts)
        ns, veth = f"{NS_PREFIX}{self.id}-{name}", f"{VETH_PREFIX}{self.id}-{index:x}"
        if len(veth) > 15:
            raise BedError(f"interface name {veth} is longer than 15 characters")
        host = Host(name, ns, self._addr(9 + index), veth)
        run("ip", "netns", "add", ns)
        self._made.append(("ns", ns))
        run("ip", "link", "add", veth, "type", "veth", "peer", "name", host.dev, "netns", ns)
        self._made.append(("link", veth))
        run("ip", "link", "set", veth, "master", self.bridge, "up")
        run("ip", "addr", "add", f"{host.ip}/24", "dev", host.dev, ns=ns)
        run("ip", "link", "set", host.dev, "up", ns=ns)
        run("ip", "link", "set", "lo", "up", ns=ns)
        self.hosts[name] = host
        return host

    def ip(self, name: str) -> str:
        return self.hosts[name].ip

    def exec_prefix(self, name: str) -> list[str]:
        """argv prefix that runs a command on host ``name`` (nothing for the operator's host)."""
        ns = self.hosts[name].ns
        return ["ip", "netns", "exec", ns] if ns else []

    # -- links --------------------------------------------------------------------------------------
    def shape(self, src: str, dst: str, mbit: float) -> None:
        """Limit what ``src`` sends to ``dst`` to ``mbit`` Mbit/s (other traffic of ``src`` is not limited)."""
        h, peer = self.hosts[src], self.hosts[dst]
        if not h.ns:
            raise BedError("shape the hosts' links, not the operator's")
        if not h.shaped:
            run("tc", "qdisc", "replace", "dev", h.dev, "root", "handle", "1:", "htb", "default", "1", ns=h.ns)
            run("tc", "class", "add", "dev", h.dev, "parent", "1:", "classid", "1:1", "htb", "rate", "100gbit",
                ns=h.ns)
        # Offloads hand the qdisc 64 KiB segments: a burst smaller than one would stall the class.
        burst = str(max(128 << 10, int(mbit * 1e6 / 8 / 50)))
        minor = h.shaped.get(dst) or 16 + len(h.shaped)
        verb = "change" if dst in h.shaped else "add"
        run("tc", "class", verb, "dev", h.dev, "parent", "1:", "classid", f"1:{minor:x}", "htb",
            "rate", f"{mbit}mbit", "ceil", f"{mbit}mbit", "burst", burst, "cburst", burst, ns=h.ns)
        if dst not in h.shaped:
            run("tc", "filter", "add", "dev", h.dev, "parent", "1:", "protocol", "ip", "prio", "1", "u32",
                "match", "ip", "dst", f"{peer.ip}/32", "flowid", f"1:{minor:x}", ns=h.ns)
            h.shaped[dst] = minor

    def shaped_bytes(self, src: str, dst: str) -> int:
        """Bytes that went through the ``src`` -> ``dst`` shaping class so far."""
        h = self.hosts[src]
        out = run("tc", "-s", "class", "show", "dev", h.dev, "classid", f"1:{h.shaped[dst]:x}", ns=h.ns)
        m = re.search(r"Sent (\d+) bytes", out)
        return int(m.group(1)) if m else 0

    def tx_bytes(self, name: str) -> int:
        """Bytes host ``name`` has sent on its interface (data, control and retransmissions alike)."""
        h = self.hosts[name]
        doc = json.loads(run("ip", "-j", "-s", "link", "show", "dev", h.dev, ns=h.ns))
        return int(doc[0]["stats64"]["tx"]["bytes"])

    def cut(self, a: str, b: str) -> None:
        """Packets between ``a`` and ``b`` vanish (both ways) until :meth:`heal`."""
        for x, y in ((a, b), (b, a)):
            hx, hy = self.hosts[x], self.hosts[y]
            run("ip", "neigh", "replace", hy.ip, "lladdr", VANISH_MAC, "nud", "permanent", "dev", hx.dev, ns=hx.ns)

    def heal(self, a: str, b: str) -> None:
        for x, y in ((a, b), (b, a)):
            hx, hy = self.hosts[x], self.hosts[y]
            run("ip", "neigh", "del", hy.ip, "dev", hx.dev, ns=hx.ns, check=False)

    def isolate(self, name: str) -> None:
        """Cut ``name`` off from every other host, the operator's included."""
        for other in self.hosts:
            if other != name:
                self.cut(name, other)

    def rejoin(self, name: str) -> None:
        for other in self.hosts:
            if other != name:
                self.heal(name, other)

    def link_down(self, name: str) -> None:
        """``name``'s interface goes down: its peers and its own sockets fail fast (no route, no carrier)."""
        h = self.hosts[name]
        run("ip", "link", "set", h.dev, "down", ns=h.ns)

    def link_up(self, name: str) -> None:
        h = self.hosts[name]
        run("ip", "link", "set", h.dev, "up", ns=h.ns)

    # -- description and teardown -------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """What a person needs to reach the bed by hand, and what :meth:`attach` needs to drive it."""
        return {"pid": self.pid, "id": self.id, "bridge": self.bridge, "subnet": str(self.subnet),
                "hosts": {n: {"namespace": h.ns, "ip": h.ip, "veth": h.veth, "shaped": h.shaped}
                          for n, h in self.hosts.items()}}

    @classmethod
    def attach(cls, doc: dict[str, Any]) -> NetBed:
        """Drive a bed another process made (from its :meth:`describe`); closing it removes nothing."""
        self = cls.__new__(cls)
        self.pid, self.id, self.bridge = doc["pid"], doc["id"], doc["bridge"]
        self.subnet = ipaddress.IPv4Network(doc["subnet"])
        self.hosts = {n: Host(n, h["namespace"], h["ip"], h["veth"], "eth0" if h["namespace"] else doc["bridge"],
                              dict(h["shaped"])) for n, h in doc["hosts"].items()}
        self._made, self._closed = [], True
        return self

    def close(self) -> None:
        """Kill what runs in the namespaces, then remove the veths, namespaces and bridge (idempotent)."""
        if self._closed:
            return
        self._closed = True
        errors = []
        for kind, name in reversed(self._made):
            try:
                if kind == "ns":
                    kill_namespace_processes(name)
                    run("ip", "netns", "del", name)
                else:
                    # Deleting a namespace frees its veth end only when the kernel gets round to it (seconds
                    # under load): remove the pair from this side at once.
                    run("ip", "link", "del", name)
            except BedError as err:
                errors.append(str(err))
        self._made.clear()
        if errors:
            raise BedError("; ".join(errors))

    def __enter__(self) -> NetBed:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
