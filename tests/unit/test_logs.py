"""JSON logs of a whole process (issue 14, item 6): what Python and C code print to stderr on their own comes
out as JSON lines too, and ids set once by ``log_context`` reach every line, also from the threads it starts.

Each case runs in a child process, as a daemon does: ``setup_logging`` takes over the process's hooks and fd 2.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

_CHILD = r"""
import gc, logging, os, sys, threading, warnings
from zcrepl.core.logs import attempt_fields, carry, kv, log_context, setup_logging
from zcrepl.core.watchtypes import WATCH_ID_BASE

setup_logging("debug", sys.argv[1], static={"service": "zc-test", "host": "hostT"})
log = logging.getLogger("zcrepl.test")
with log_context(job=7, attempt=2):
    log.info("plain line", extra=kv(path=b"a\nb\xff"))
    t = threading.Thread(target=carry(lambda: log.info("from a thread it started")))
    t.start(); t.join()
    log.info("own fields win", extra=kv(attempt=3))
log.info("data plane of a watch rule", extra=kv(job=WATCH_ID_BASE + 5, path="x"))
with log_context(**attempt_fields(WATCH_ID_BASE + 5, 9)):
    log.info("in a watch session")
logging.getLogger("grpc._cython.cygrpc").error("from grpc's Python side")
logging.getLogger("watchdog.observers.inotify_buffer").warning("from watchdog")
logging.getLogger("asyncio").error("from asyncio")
warnings.warn("a warning", UserWarning)
os.write(2, b"E1130 14:01:44.891719   16652 ssl_transport_security.cc:2563] Handshake failed with error SSL\n")
os.write(2, b"W1130 14:01:44.9 16 chttp2_transport.cc:1234] keepalive\nI1130 14:01:45.0 16 x.cc:1] chatty\n")
print("printed to stderr\nin two lines", file=sys.stderr)

class Bad:
    def __del__(self):
        raise RuntimeError("raised in __del__")
Bad()
gc.collect()
threading.Thread(target=lambda: 1 / 0, name="doomed").start()
os.write(2, b"plain bytes from C, no newline at the end")
raise ValueError("nobody caught this")
"""


def run(fmt: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _CHILD, fmt], capture_output=True, text=True, timeout=60)


def test_every_line_a_json_process_writes_is_json_with_its_fields() -> None:
    p = run("json")
    assert p.returncode == 1  # the uncaught exception still ends the process as Python would
    assert p.stdout == ""
    docs: list[dict[str, Any]] = []
    for line in p.stderr.splitlines():
        try:
            docs.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not JSON: {line!r}\n{p.stderr}") from None
    assert all(d["service"] == "zc-test" and d["host"] == "hostT" for d in docs)
    by = {d["msg"]: d for d in docs}
    assert (by["plain line"]["job"], by["plain line"]["attempt"]) == (7, 2)
    assert by["plain line"]["path"] == "a\\nb\\xff"  # bytes shown escaped: one line, always
    assert (by["from a thread it started"]["job"], by["from a thread it started"]["attempt"]) == (7, 2)
    assert (by["own fields win"]["job"], by["own fields win"]["attempt"]) == (7, 3)
    assert "job" not in by["data plane of a watch rule"] and by["data plane of a watch rule"]["rule"] == 5
    assert (by["in a watch session"]["rule"], by["in a watch session"]["epoch"]) == (5, 9)
    assert "job" not in by["in a watch session"]
    for msg, logger in (("from grpc's Python side", "grpc._cython.cygrpc"),
                        ("from watchdog", "watchdog.observers.inotify_buffer"), ("from asyncio", "asyncio")):
        assert by[msg]["logger"] == logger
    assert any(d["logger"] == "py.warnings" and "a warning" in d["msg"] for d in docs)
    core = by["Handshake failed with error SSL"]
    assert (core["logger"], core["level"], core["source"]) == ("grpc.core", "error", "ssl_transport_security.cc:2563")
    assert by["keepalive"]["level"] == "warning"
    assert "chatty" not in by  # gRPC's C core follows the grpc logger's level (warning: benign reconnects)
    assert by["plain bytes from C, no newline at the end"]["logger"] == "stderr"
    assert by["printed to stderr"]["logger"] == "stderr" and by["in two lines"]["logger"] == "stderr"
    ignored = next(d for d in docs if "raised in __del__" in d.get("exc", ""))
    assert ignored["level"] == "warning" and ignored["logger"] == "zcrepl.uncaught"
    thread = by["uncaught exception in a thread"]
    assert thread["thread"] == "doomed" and "ZeroDivisionError" in thread["exc"]
    main = by["uncaught exception"]
    assert main["level"] == "critical" and "ValueError: nobody caught this" in main["exc"]


def test_key_value_lines_carry_the_context_and_leave_stderr_alone() -> None:
    p = run("kv")
    lines = p.stderr.splitlines()
    assert any(x.startswith("ts=") and 'msg="from a thread it started"' in x and "job=7 attempt=2" in x
               for x in lines)
    assert any(x.startswith("E1130 14:01:44.891719") for x in lines)  # C's own lines are untouched in kv
