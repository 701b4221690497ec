"""Compression on a slow link: wire bytes, CPU and wall time of one data-plane transfer with and without zstd,
across a link shaped to 50 Mbit/s (``tc qdisc ... tbf``) between two network namespaces (tests/netbed.py).

    sudo /path/to/venv/bin/python bench/compress.py [--mbit 50] [--mb 40] [--runs 2] [--data /tmp/zcbench-z]

The sender and the receiver are the agents' own data-plane classes (``Sender``, ``ReceiveSession``), each in a
process of its own in its namespace (no controller: the order is what the controller would send). Datasets,
copied once under DATA from this machine's /usr/share/doc, capped at ``--mb`` MB each:

- text: its plain files (changelogs, copyright files, READMEs, HTML): text-like, zstd shrinks it severalfold;
- gz: its ``.gz`` files: already compressed, zstd cannot shrink them (pieces go STORED).

Per row: the median wall time of the transfer (connect to result), both processes' CPU seconds (all threads,
``time.process_time``), file bytes, the data plane's wire bytes (``TransferStats.wire_bytes``: frames and file
bytes both ways) and the bytes the sender's interface transmitted (``ip -s link``: TCP/IP headers and
retransmissions included). Each copy is compared with its source before its figures count.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


# -- the two roles, each run in its own namespace ---------------------------------------------------------
def serve(dst: str) -> None:
    """Receiver: a data server on every address; stdin lines "JOB TICKET_HEX" grant one session each, stdout
    gets a JSON line per session when it ends."""
    from zcrepl.agent.transfer.receive import ReceiveSession, ReceiveSpec
    from zcrepl.agent.transfer.saferoot import SafeRoot
    from zcrepl.agent.transfer.server import DataServer, Grant, TicketBook
    from zcrepl.core.config import AgentConfig
    from zcrepl.core.types import Durability, JobOptions

    tickets = TicketBook()
    server = DataServer("0.0.0.0", 0, tickets, AgentConfig())
    server.start()
    export = SafeRoot(os.fsencode(dst))
    print(json.dumps({"port": server.address[1]}), flush=True)
    for line in sys.stdin:
        job_text, ticket_hex = line.split()
        job = int(job_text)

        def session(ch: Any, hello: Any, job: int = job) -> None:
            cpu = time.process_time()
            spec = ReceiveSpec(job, 1, export, (f"run{job}".encode(),), JobOptions(durability=Durability.NONE),
                               "b:/dst")
            try:
                stats = ReceiveSession(spec, tickets).serve_control(ch, hello)
                doc: dict[str, Any] = {"job": job, "ok": True, "files": stats.files_done}
            except Exception as err:
                doc = {"job": job, "ok": False, "error": str(err)}
            doc["cpu"] = time.process_time() - cpu
            print(json.dumps(doc), flush=True)

        tickets.register(bytes.fromhex(ticket_hex), Grant(job, 1, time.monotonic() + 60, session))
        print(json.dumps({"granted": job}), flush=True)


def send(src: str, address: str, job: int, ticket_hex: str, compress: bool, level: int, streams: int) -> None:
    """Sender: one transfer; prints its figures as a JSON line."""
    from zcrepl.agent.transfer.cancel import Cancel
    from zcrepl.agent.transfer.saferoot import SafeRoot
    from zcrepl.agent.transfer.send import Sender, SendSpec
    from zcrepl.core.types import Compress, Durability, JobOptions

    host, port = address.rsplit(":", 1)
    opts = JobOptions(streams=streams, durability=Durability.NONE, compress=Compress.ON if compress else Compress.OFF,
                      compress_level=level)
    spec = SendSpec(job, 1, bytes.fromhex(ticket_hex), (host, int(port)), opts, Cancel(), lambda _s: None,
                    io_timeout=300.0)
    root = SafeRoot(os.fsencode(src))
    cpu, start = time.process_time(), time.monotonic()
    stats = Sender(spec, root).run()
    print(json.dumps({"wall": time.monotonic() - start, "cpu": time.process_time() - cpu,
                      "bytes": stats.bytes_done, "wire": stats.wire_bytes, "files": stats.files_done}), flush=True)


# -- the orchestrator -------------------------------------------------------------------------------------
def gather(data: Path, mb: int) -> dict[str, Path]:
    """DATA/text and DATA/gz from /usr/share/doc (copied once per --mb; delete DATA to take them again)."""
    out = {"text": data / "src" / "text", "gz": data / "src" / "gz"}
    marker = data / "src" / "mb"
    if marker.exists() and marker.read_text() == str(mb) and all(p.is_dir() for p in out.values()):
        return out
    for p in out.values():
        shutil.rmtree(p, ignore_errors=True)
        p.mkdir(parents=True)
    budget = dict.fromkeys(out, mb * 1_000_000)
    for root, _dirs, files in sorted(os.walk("/usr/share/doc")):
        for name in sorted(files):
            path = Path(root) / name
            if path.is_symlink() or not path.is_file():
                continue
            kind = "gz" if name.endswith(".gz") else "text"
            size = path.stat().st_size
            if budget[kind] < size:
                continue
            rel = path.relative_to("/usr/share/doc")
            (out[kind] / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, out[kind] / rel)
            budget[kind] -= size
    marker.write_text(str(mb))
    return out


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--serve", metavar="DST", help=argparse.SUPPRESS)
    p.add_argument("--send", nargs=6, metavar="X", help=argparse.SUPPRESS)
    p.add_argument("--mbit", type=float, default=50.0, help="the link's rate (default 50 Mbit/s)")
    p.add_argument("--mb", type=int, default=40, help="MB of each dataset (default 40)")
    p.add_argument("--runs", type=int, default=2, help="timed runs per row (default 2)")
    p.add_argument("--streams", type=int, default=2, help="data connections (default 2)")
    p.add_argument("--levels", default="1,3", help="zstd levels to measure (default 1,3)")
    p.add_argument("--data", default="/tmp/zcbench-z", help="where the datasets and copies go")
    args = p.parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    if args.send:
        src, address, job, ticket, level, streams = args.send
        send(src, address, int(job), ticket, int(level) > 0, int(level), int(streams))
        return 0

    from netbed import NetBed, run

    data = Path(args.data)
    sets = gather(data, args.mb)
    dst = data / "dst"
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    rows: list[dict[str, Any]] = []
    with NetBed() as bed:
        a, b = bed.add_host("a"), bed.add_host("b")
        burst = str(max(128 << 10, int(args.mbit * 1e6 / 8 / 50)))  # 20 ms of the rate, at least 128 KiB
        run("tc", "qdisc", "replace", "dev", a.dev, "root", "tbf", "rate", f"{args.mbit}mbit", "burst", burst,
            "latency", "50ms", ns=a.ns)
        receiver = subprocess.Popen([*bed.exec_prefix("b"), sys.executable, __file__, "--serve", str(dst)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert receiver.stdin is not None and receiver.stdout is not None
        try:
            port = json.loads(receiver.stdout.readline())["port"]
            job = 0
            for name, src in sets.items():
                raw, want = tree_bytes(src), tree_digest(src)
                for level in [0, *(int(x) for x in args.levels.split(","))]:
                    runs = []
                    for _ in range(args.runs):
                        job += 1
                        ticket = os.urandom(32).hex()
                        receiver.stdin.write(f"{job} {ticket}\n")
                        receiver.stdin.flush()
                        assert json.loads(receiver.stdout.readline()) == {"granted": job}
                        tx = bed.tx_bytes("a")
                        out = subprocess.run([*bed.exec_prefix("a"), sys.executable, __file__, "--send", str(src),
                                              f"{b.ip}:{port}", str(job), ticket, str(level), str(args.streams)],
                                             check=True, capture_output=True, text=True)
                        sent = json.loads(out.stdout.splitlines()[-1])
                        got = json.loads(receiver.stdout.readline())
                        if not got["ok"] or tree_digest(dst / f"run{job}") != want:
                            raise SystemExit(f"run {job} ({name}, level {level}) did not copy exactly: {got}")
                        shutil.rmtree(dst / f"run{job}")
                        runs.append({**sent, "rx_cpu": got["cpu"], "tx_if": bed.tx_bytes("a") - tx})
                    rows.append({"data": name, "raw": raw, "level": level, "runs": runs})
                    print(fmt(rows[-1]), flush=True)
        finally:
            receiver.stdin.close()
            receiver.terminate()
            receiver.wait(10)
    print(table(rows, args.mbit))
    (HERE / "results").mkdir(exist_ok=True)
    out_path = HERE / "results" / f"compress-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out_path.write_text(json.dumps({"mbit": args.mbit, "streams": args.streams, "rows": rows}, indent=1))
    print(f"saved {out_path}")
    return 0


def med(row: dict[str, Any], key: str) -> float:
    return float(statistics.median(r[key] for r in row["runs"]))


def fmt(row: dict[str, Any]) -> str:
    mode = f"zstd -{row['level']}" if row["level"] else "off (sendfile/splice)"
    mb = 1e6
    return (f"| {row['data']} | {mode} | {row['raw'] / mb:.1f} | {med(row, 'wire') / mb:.1f} | "
            f"{med(row, 'tx_if') / mb:.1f} | {med(row, 'wall'):.2f} | {row['raw'] / mb / med(row, 'wall'):.1f} | "
            f"{med(row, 'cpu'):.2f} | {med(row, 'rx_cpu'):.2f} |")


def table(rows: list[dict[str, Any]], mbit: float) -> str:
    head = (f"link {mbit:g} Mbit/s (tbf)\n\n| data | compression | file MB | wire MB (data plane) | sent on the "
            "interface MB | wall s | file MB/s | sender CPU s | receiver CPU s |\n" + "|---" * 9 + "|")
    return "\n".join([head, *(fmt(r) for r in rows)])


if __name__ == "__main__":
    raise SystemExit(main())
