"""Simulated zc-agents for bench/scale.py: N agents in ONE process, each with its own channel (TCP connection)
and Connect stream, registering under a unique name and then heartbeating with a realistic HostHealth.

Started and stopped (SIGTERM) by bench/scale.py; writes a ready file once every agent has registered (or
failed to), and on SIGTERM a stats file with each heartbeat's send time and scheduling lag.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from zcrepl.core.identity import CONTROLLER_DNS
from zcrepl.core.readyfile import write_ready_file
from zcrepl.proto import controller_pb2 as cpb
from zcrepl.proto import controller_pb2_grpc
from zcrepl.proto import types_pb2 as tpb
from zcrepl.proto.channels import KEEPALIVE_CLIENT

GiB, TiB = 1 << 30, 1 << 40
# A real agent has its own TCP connection: without a local subchannel pool gRPC would share one connection
# among all channels with the same target and arguments, and the controller would see a single client.
SIM_CHANNEL = [*KEEPALIVE_CLIENT, ("grpc.use_local_subchannel_pool", 1)]


def fake_health(rng: random.Random) -> tpb.HostHealth:
    """A HostHealth shaped like a real agent's: per-core CPU, two exports, two disks, three NICs."""
    cores = rng.choice((8, 16, 32))
    h = tpb.HostHealth(cpu_count=cores, mem_total=cores * 8 * GiB, open_fds=rng.randint(40, 90),
                       agent_rss=rng.randint(40, 90) << 20)
    for path, total in ((b"/srv/data", 20 * TiB), (b"/srv/backup", 8 * TiB)):
        free = int(total * rng.uniform(0.1, 0.7))
        h.exports.add(path=path, total=total, used=total - free, free=free, percent=100 * (total - free) / total)
    for dev in ("nvme0n1", "sda"):
        h.disks.add(device=dev)
    for nic, speed in (("eth0", 10_000), ("eth1", 10_000), ("lo", 0)):
        h.nics.add(interface=nic, speed_mbps=speed)
    vary(h, rng)
    return h


def vary(h: tpb.HostHealth, rng: random.Random) -> None:
    """New figures for the next sample, so every heartbeat carries fresh values, as a psutil sample would."""
    per_core = [rng.uniform(0, 60) for _ in range(h.cpu_count)]
    h.cpu_per_core[:] = per_core
    h.cpu_percent = sum(per_core) / len(per_core)
    h.load1 = h.cpu_count * h.cpu_percent / 100 * rng.uniform(0.8, 1.2)
    h.load5, h.load15 = h.load1 * 0.9, h.load1 * 0.8
    h.mem_available = int(h.mem_total * rng.uniform(0.3, 0.8))
    for d in h.disks:
        d.read_bps, d.write_bps, d.busy_percent = rng.uniform(0, 2e8), rng.uniform(0, 2e8), rng.uniform(0, 60)
    for n in h.nics:
        n.recv_bps, n.sent_bps = rng.uniform(0, 3e8), rng.uniform(0, 3e8)
    h.disk_read_bps, h.disk_write_bps = sum(d.read_bps for d in h.disks), sum(d.write_bps for d in h.disks)
    h.net_recv_bps, h.net_sent_bps = sum(n.recv_bps for n in h.nics), sum(n.sent_bps for n in h.nics)
    h.agent_cpu_percent = rng.uniform(0.2, 2.0)


class SimAgent:
    """One simulated zc-agent: its own channel (TCP connection) and Connect stream, register, then heartbeats."""

    def __init__(self, index: int, seed: int) -> None:
        self.name = f"sim{index:05d}"
        self.rng = random.Random(seed * 1_000_003 + index)
        self.health = fake_health(self.rng)
        self.channel: grpc.aio.Channel | None = None
        self.call: Any = None
        self.beats: list[tuple[float, float]] = []  # (sampled_at as sent, scheduling lag in seconds)
        self.error = ""

    async def connect(self, target: str, sem: asyncio.Semaphore, timeout: float,
                      creds: grpc.ChannelCredentials | None = None) -> float:
        """Register; returns the heartbeat interval the controller's Welcome sets, 0 on failure."""
        async with sem:
            info = tpb.AgentInfo(name=self.name, grpc_address="127.0.0.1:1", data_address="127.0.0.1:2",
                                 exports=[e.path for e in self.health.exports], version="bench-sim",
                                 pid=os.getpid(), hostname=self.name)
            try:
                self.channel = (grpc.aio.secure_channel(target, creds, options=[
                    *SIM_CHANNEL, ("grpc.ssl_target_name_override", CONTROLLER_DNS)])
                    if creds is not None else grpc.aio.insecure_channel(target, options=SIM_CHANNEL))
                self.call = controller_pb2_grpc.ControllerStub(self.channel).Connect()
                await self.call.write(cpb.AgentMessage(register=cpb.Register(info=info)))
                first = await asyncio.wait_for(self.call.read(), timeout)
            except (grpc.RpcError, TimeoutError, ConnectionError) as err:
                self.error = f"connect: {type(err).__name__}: {err}"
                return 0.0
            if first is grpc.aio.EOF or first.WhichOneof("kind") != "welcome":
                self.error = f"connect: expected a Welcome, got {first}"
                return 0.0
            return first.welcome.heartbeat_interval

    def message(self) -> cpb.AgentMessage:
        vary(self.health, self.rng)
        return cpb.AgentMessage(heartbeat=cpb.Heartbeat(health=self.health))

    async def beat(self, first_due: float, interval: float) -> None:
        """Heartbeats on a fixed grid (no drift), so a late one shows up as lag instead of a slower cadence."""
        loop = asyncio.get_running_loop()
        due = first_due
        while True:
            if (delay := due - loop.time()) > 0:
                await asyncio.sleep(delay)
            lag = loop.time() - due
            msg = self.message()
            sent = msg.heartbeat.health.sampled_at = time.time()  # last thing before the write: latency starts here
            try:
                await self.call.write(msg)
            except (grpc.RpcError, asyncio.InvalidStateError) as err:
                self.error = f"heartbeat: {type(err).__name__}: {err}"
                return
            self.beats.append((sent, lag))
            due += interval

    async def drain(self) -> None:
        """Read orders (none are expected) so a stream the controller closes is noticed."""
        while await self.call.read() is not grpc.aio.EOF:
            pass
        self.error = self.error or "the controller closed the stream"

    async def close(self) -> None:
        if self.call is not None:
            self.call.cancel()
        if self.channel is not None:
            await self.channel.close()


async def simulate(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    agents = [SimAgent(i, args.seed) for i in range(args.agents)]
    sem = asyncio.Semaphore(args.connect_concurrency)  # a thundering herd of handshakes measures nothing useful
    creds = agent_credentials(Path(args.pki_dir), [a.name for a in agents]) if args.pki_dir else {}
    t0 = time.monotonic()
    intervals = await asyncio.gather(*(a.connect(args.controller, sem, 30.0, creds.get(a.name)) for a in agents))
    live = [a for a, iv in zip(agents, intervals, strict=True) if iv > 0]
    interval = max(intervals, default=0.0) or 1.0
    write_ready_file(args.ready_file, {
        "connected": len(live), "failed": len(agents) - len(live), "connect_seconds": time.monotonic() - t0,
        "interval": interval, "errors": sorted({a.error for a in agents if a.error})[:5],
        "heartbeat_bytes": agents[0].message().ByteSize() if agents else 0})
    base = loop.time() + 0.2
    # Evenly staggered phases: agent i beats at i/N of the interval, as independent agents would on average.
    tasks = [asyncio.create_task(a.beat(base + i * interval / max(1, len(live)), interval))
             for i, a in enumerate(live)]
    tasks += [asyncio.create_task(a.drain()) for a in live]
    tasks.append(asyncio.create_task(_orphan_watch(stop)))
    await stop.wait()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.gather(*(a.close() for a in agents), return_exceptions=True)
    write_ready_file(args.stats_file, {
        "beats": [b for a in live for b in a.beats],
        "errors": Counter(a.error.split(":")[0] for a in live if a.error)})
    return 0


def agent_credentials(pki_dir: Path, names: list[str]) -> dict[str, grpc.ChannelCredentials]:
    """A certificate per simulated agent from the controller's own CA (in memory; ~1 ms each)."""
    from zcrepl.core import pki

    ca = pki.CA.load(pki_dir)
    out = {}
    for name in names:
        key = pki.new_key()
        cert = ca.issue(key.public_key(), "agent", name, days=1)
        out[name] = grpc.ssl_channel_credentials(ca.pem, pki.key_pem(key), pki.cert_pem(cert))
    return out


async def _orphan_watch(stop: asyncio.Event) -> None:
    """Stop when the benchmark died without stopping us (e.g. SIGKILL): never leave 1,000 streams open."""
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(1.0)
    stop.set()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/simagents.py", description="N simulated zc-agents (run by bench/scale.py)")
    p.add_argument("--controller", required=True)
    p.add_argument("--agents", type=int, required=True)
    p.add_argument("--ready-file", required=True)
    p.add_argument("--stats-file", required=True)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--pki-dir", default="", help="the controller's CA directory: agents speak mutual TLS")
    p.add_argument("--connect-concurrency", type=int, default=50)
    return asyncio.run(simulate(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
