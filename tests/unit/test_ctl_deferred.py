"""What zc-ctl defers (cli/deferred.py): gRPC's asyncio half and protobuf's pure-Python messages are not run by
``import grpc`` or the generated modules, and are whole at their first use."""

from __future__ import annotations

import subprocess
import sys

from zcrepl.cli.deferred import defer_unused

_PROBE = """
import sys, threading
from zcrepl.cli.deferred import defer_unused, is_placeholder

defer_unused()
import grpc
import asyncio
from google.protobuf.internal import python_message
from zcrepl.proto import controller_pb2 as cpb
from zcrepl.proto.errors import from_rpc_error  # what zc-ctl's client imports
assert is_placeholder(asyncio) and is_placeholder(grpc.aio), "import grpc ran asyncio or grpc.aio"
assert "asyncio.base_events" not in sys.modules and "grpc.aio._channel" not in sys.modules
assert cpb.JobRef.FromString(cpb.JobRef(id=7).SerializeToString()).id == 7
assert is_placeholder(python_message) and "google.protobuf.text_format" not in sys.modules
assert python_message.GeneratedProtocolMessageType and not is_placeholder(python_message)

# The first use, from several threads at once: each one sees the whole module.
results = []
def use():
    results.append(asyncio.run(asyncio.sleep(0, result=7)))
threads = [threading.Thread(target=use) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
assert results == [7] * 4 and not is_placeholder(asyncio), results

async def main():
    async with grpc.aio.insecure_channel("127.0.0.1:9") as ch:
        return type(ch).__name__
assert asyncio.run(main()) == "Channel" and not is_placeholder(grpc.aio)
print("ok")
"""


def test_import_grpc_runs_neither_and_the_first_use_loads_them_whole() -> None:
    p = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout == "ok\n", p.stderr


def test_nothing_changes_once_they_are_loaded() -> None:
    import asyncio

    import grpc
    from google.protobuf.internal import python_message

    before = dict(sys.modules)
    defer_unused()
    assert dict(sys.modules) == before and sys.modules["asyncio"] is asyncio and grpc and python_message
