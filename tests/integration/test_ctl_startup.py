"""What zc-ctl loads for the commands issue 11 times (``--help``, ``agents``, a 1-file ``replicate``), against a
real controller; bench/startup.py measures how long they take."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from zchelpers import Cluster


def _ctl_modules(cluster: Cluster, *args: str) -> tuple[int, str, set[str]]:
    """Run zc-ctl under ``-X importtime``: (exit code, stdout, every module it imported)."""
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "zcrepl.cli.ctl", "--controller",
                        cluster.controller_addr, *args], capture_output=True, timeout=120,
                       env={**os.environ, **cluster.pki.env()})
    mods = {line.rsplit("|", 1)[1].strip() for line in p.stderr.decode().splitlines()
            if line.startswith("import time:") and "|" in line}
    return p.returncode, p.stdout.decode(), mods


def test_each_command_loads_only_what_it_uses(cluster: Cluster, tmp_path: Path) -> None:
    src = tmp_path / "a" / "one"
    src.mkdir(parents=True)
    (src / "f").write_bytes(b"hello")

    rc, out, mods = _ctl_modules(cluster, "agents", "--json")
    assert rc == 0 and {a["name"] for a in json.loads(out)} == {"hostA", "hostB"}
    assert "grpc" in mods and "zcrepl.proto.controller_pb2" in mods
    # (grpc itself touches the bare grpc_health and grpc_reflection packages; their services stay unloaded.)
    # asyncio, grpc.aio and protobuf's pure-Python messages stay placeholders (cli/deferred.py): none of it ran.
    unused = sorted(m for m in mods if m.startswith(("rich", "zcrepl.core.watchtypes", "zcrepl.proto.security_pb2",
                                                     "grpc_health.", "grpc_reflection.", "cryptography",
                                                     "asyncio.", "grpc.aio.", "google.protobuf.text_format")))
    assert not unused, f"zc-ctl agents --json loaded {unused}"

    rc, out, mods = _ctl_modules(cluster, "agents")  # piped, the table is drawn without rich
    assert rc == 0 and out.startswith("agents\n┏━") and "│ hostA │ online │" in out
    assert not [m for m in mods if m.startswith(("rich", "zcrepl.core.watchtypes"))]

    rc, out, mods = _ctl_modules(cluster, "replicate", f"hostA:{src}", f"hostB:{tmp_path}/b/one")
    assert rc == 0 and out.startswith("job ") and " done: 1 files (5 B) copied" in out
    assert (tmp_path / "b" / "one" / "f").read_bytes() == b"hello"
    # Piped, the progress bar is never drawn (rich drew nothing off a terminal either): no rich at all.
    assert not [m for m in mods if m.startswith(("rich", "zcrepl.core.watchtypes", "asyncio.", "grpc.aio."))]
