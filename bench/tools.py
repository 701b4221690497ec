"""The contenders: zcrepl end to end (two durability modes), the raw sendfile limit, rsync to a daemon,
rsync local and cp -a. Each knows which workloads it takes part in, where its destination is, and how to
run one timed transfer; ``prepare`` puts a destination into its pre-run state (never timed).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import rawnet
from daemons import BIN, RsyncDaemon, ZcCluster
from measure import Run, children_cpu, proc_cpu, wait_reaped
from workloads import Workload


def env() -> dict[str, str]:
    """The tools' environment, read when a tool runs: the cluster puts zc-ctl's certificate (ZC_CA, ...) into
    os.environ when it starts. LC_ALL=C: rsync prints 1,234 style numbers in the C locale."""
    return {**os.environ, "LC_ALL": "C", "COLUMNS": "200"}


@dataclass
class Context:
    src_root: Path  # hostA's export
    dst_root: Path  # hostB's export; every tool writes under dst_root/<tool>/<workload>
    cluster: ZcCluster
    rsyncd: RsyncDaemon
    streams: int = 0  # passed to zc-ctl --streams when > 0


class Tool:
    key = ""
    label = ""
    modes: tuple[str, ...] = ("fresh", "delta", "nochange")
    local = False  # one process tree: CPU is a single total, reported on the send side

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def supports(self, w: Workload) -> bool:
        return w.mode in self.modes

    def src(self, w: Workload) -> Path:
        return self.ctx.src_root / w.source

    def dest(self, w: Workload) -> Path:
        return self.ctx.dst_root / self.key / w.name

    def clear(self, w: Workload) -> None:
        d = self.dest(w)
        subprocess.run(["rm", "-rf", str(d)], check=True)
        d.parent.mkdir(parents=True, exist_ok=True)

    def prepare(self, w: Workload) -> None:
        """Fresh: no destination. Delta: the destination holds W1's original file (cp -p). No-change:
        left as the previous sync made it."""
        d = self.dest(w)
        if w.mode in ("fresh", "delta"):
            self.clear(w)
        if w.mode == "delta":
            d.mkdir()
            subprocess.run(["cp", "-p", str(self.ctx.src_root / "W1" / "big.bin"), str(d / "big.bin")],
                           check=True)

    def run(self, w: Workload) -> Run:
        raise NotImplementedError

    def _local(self, w: Workload, argv: list[str]) -> Run:
        """Time a local command; its CPU is the change in reaped-children rusage."""
        c0 = children_cpu()
        t0 = time.perf_counter()
        p = subprocess.run(argv, capture_output=True, env=env())
        wall = time.perf_counter() - t0
        cpu = children_cpu() - c0
        out = p.stdout.decode(errors="replace")
        return Run(w.name, self.key, 0, wall, ok=p.returncode == 0, note=_err(p), cpu_send=cpu,
                   wire_bytes=rsync_wire_bytes(out))


class Zcrepl(Tool):
    """``zc-ctl replicate --json`` against the benchmark's cluster; agent CPU from /proc deltas. ``encrypt``:
    the same with ``--encrypt`` (TLS 1.3 data connections; the row says whether kTLS ran)."""

    def __init__(self, ctx: Context, durability: str, encrypt: bool = False) -> None:
        super().__init__(ctx)
        self.durability = durability
        self.encrypt = encrypt
        self.key = f"zc-{durability}" + ("-tls" if encrypt else "")
        self.label = f"zcrepl {durability}" + (" --encrypt" if encrypt else "")

    def run(self, w: Workload) -> Run:
        c = self.ctx.cluster
        argv = [str(BIN / "zc-ctl"), "--controller", c.addr, "replicate", f"hostA:{self.src(w)}",
                f"hostB:{self.dest(w)}", "--json", "--durability", self.durability]
        if self.ctx.streams:
            argv += ["--streams", str(self.ctx.streams)]
        if self.encrypt:
            argv.append("--encrypt")
        a, b, ctl = c.pid("hostA"), c.pid("hostB"), c.controller.pid
        a0, b0, k0, c0 = proc_cpu(a)[0], proc_cpu(b)[0], proc_cpu(ctl)[0], children_cpu()
        t0 = time.perf_counter()
        p = subprocess.run(argv, capture_output=True, env=env())
        wall = time.perf_counter() - t0
        a1, b1, k1, c1 = proc_cpu(a)[0], proc_cpu(b)[0], proc_cpu(ctl)[0], children_cpu()
        run = Run(w.name, self.key, 0, wall, cpu_send=a1 - a0, cpu_recv=b1 - b0, cpu_client=c1 - c0,
                  extra={"cpu_controller": round(k1 - k0, 3)})
        try:
            job = json.loads(p.stdout)
        except ValueError:
            run.ok, run.note = False, f"exit {p.returncode}: {_err(p) or 'no JSON'}"
            return run
        hist = job["history"][-1] if job.get("history") else {}
        run.ok = p.returncode == 0 and job["state"] == "done"
        run.note = "" if run.ok else f"{job['state']}: {job.get('error')}"
        if job.get("attempts", 1) > 1:
            run.note += f" ({job['attempts']} attempts)"
        if hist.get("ended_at") and hist.get("started_at"):
            run.job_seconds = hist["ended_at"] - hist["started_at"]
        if job.get("finished_at") and job.get("created_at"):
            run.submit_to_done = job["finished_at"] - job["created_at"]
        prog = job.get("progress", {})
        run.wire_bytes = prog.get("wire_bytes")
        run.extra.update(job_id=job["id"], queued=round((job.get("started_at") or 0) - job["created_at"], 4),
                         files_done=prog.get("files_done"), bytes_done=prog.get("bytes_done"),
                         files_skipped=prog.get("files_skipped"), transport=job.get("transport"))
        if self.encrypt and run.ok and job.get("transport") not in ("tls", "ktls"):
            run.ok, run.note = False, f"asked for --encrypt, the job ran {job.get('transport')!r}"
        return run


class Raw(Tool):
    key, label = "raw", "raw sendfile->file"

    def supports(self, w: Workload) -> bool:
        return w.name == "W1"

    def run(self, w: Workload) -> Run:
        return rawnet.send(self.src(w) / "big.bin", self.dest(w) / "big.bin", w.name)


class RsyncDaemonTool(Tool):
    """``rsync -a --stats SRC/ rsync://127.0.0.1:PORT/mod/W/``. Send CPU is the client's rusage; receive CPU
    is what the daemon reaped from its per-connection children (plus its own accept/fork work)."""

    key, label = "rsyncd", "rsync -> daemon"

    def dest(self, w: Workload) -> Path:
        return self.ctx.rsyncd.path / w.name

    def run(self, w: Workload) -> Run:
        d = self.ctx.rsyncd
        wait_reaped(d.pid)
        own0, kids0 = proc_cpu(d.pid)
        run = self._local(w, ["rsync", "-a", "--stats", f"{self.src(w)}/", d.url(w.name)])
        if not wait_reaped(d.pid):
            run.note += " daemon children still running; receive CPU incomplete"
        own1, kids1 = proc_cpu(d.pid)
        run.cpu_recv = (own1 - own0) + (kids1 - kids0)
        return run


class RsyncLocal(Tool):
    key, label, local = "rsync", "rsync local", True

    def run(self, w: Workload) -> Run:
        return self._local(w, ["rsync", "-a", "--stats", f"{self.src(w)}/", f"{self.dest(w)}/"])


class Cp(Tool):
    key, label, local = "cp", "cp -a", True
    modes = ("fresh",)  # a delta or no-change cp -a is a plain re-copy; not meaningful

    def run(self, w: Workload) -> Run:
        return self._local(w, ["cp", "-a", str(self.src(w)), str(self.dest(w))])


def all_tools(ctx: Context, encrypt: bool = False) -> list[Tool]:
    """In the order they run inside a round; ``encrypt`` adds the zcrepl rows with --encrypt."""
    tls: list[Tool] = [Zcrepl(ctx, "none", encrypt=True), Zcrepl(ctx, "job", encrypt=True)] if encrypt else []
    return [Zcrepl(ctx, "none"), Zcrepl(ctx, "job"), *tls, Raw(ctx), RsyncDaemonTool(ctx), RsyncLocal(ctx), Cp(ctx)]


_STAT = re.compile(rb"Total bytes (sent|received): ([\d,.]+)")


def rsync_wire_bytes(out: str) -> int | None:
    """Total bytes sent + received from rsync's --stats (the client's view of the connection)."""
    found = {k.decode(): int(re.sub(rb"[,.]", b"", v)) for k, v in _STAT.findall(out.encode())}
    return found["sent"] + found["received"] if len(found) == 2 else None


def _err(p: subprocess.CompletedProcess[bytes]) -> str:
    if p.returncode == 0:
        return ""
    return p.stderr.decode(errors="replace").strip().splitlines()[-1:][0] if p.stderr.strip() else ""
