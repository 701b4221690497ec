"""Structured, greppable logging: one ``key=value`` line per event.

Use ``log.info("job started", extra=kv(job=3, host="hostA"))``; values are quoted and escaped so a
name with spaces, newlines or non-UTF-8 bytes can never forge a second log line (CWE-117).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def kv(**fields: Any) -> dict[str, Any]:
    """Wrap fields for ``extra=``; kept under one key so they never clash with LogRecord attributes."""
    return {"kv": fields}


def _value(v: Any) -> str:
    if isinstance(v, bytes):
        from zcrepl.core.paths import show

        v = show(v)
    elif isinstance(v, float):
        v = f"{v:.6g}"
    else:
        v = str(v)
    if v and all(c.isalnum() or c in "-_.:/@+,%" for c in v):
        return v
    return json.dumps(v, ensure_ascii=True)


class KVFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [
            f"ts={ts}.{int(record.msecs):03d}Z",
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"msg={_value(record.getMessage())}",
        ]
        for key, value in getattr(record, "kv", {}).items():
            parts.append(f"{key}={_value(value)}")
        if record.exc_info:
            parts.append(f"exc={_value(self.formatException(record.exc_info))}")
        return " ".join(parts)


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in getattr(record, "kv", {}).items():
            doc[key] = _value(value) if isinstance(value, bytes) else value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def setup_logging(level: str = "info", fmt: str = "kv", stream: Any = None) -> None:
    """Configure the root logger once per daemon process (stderr by default, for journald)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else KVFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # grpc's own logger is chatty at INFO about benign reconnects.
    logging.getLogger("grpc").setLevel(max(logging.WARNING, root.level))
    # watchdog logs every inotify event at debug: thousands of lines a second under a burst of changes.
    logging.getLogger("watchdog").setLevel(max(logging.INFO, root.level))
