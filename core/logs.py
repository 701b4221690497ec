"""Structured, greppable logging: one ``key=value`` line per event, or one JSON object (``--log-format json``).

Use ``log.info("job started", extra=kv(job=3, host="hostA"))``; values are quoted and escaped so a
name with spaces, newlines or non-UTF-8 bytes can never forge a second log line (CWE-117).

Ids travel as fields, not only inside the message: ``job``, ``attempt``, ``host`` and ``rule`` (a watch rule).
``log_context(job=3, attempt=1)`` sets fields for every line logged inside it by the same thread or asyncio
task (a transfer thread sets its job and attempt once; the scanner, the workers and the writer it calls log
them without knowing). A line's own fields win over the context's. In JSON, every line also carries the
daemon's ``service`` (and an agent's ``host``), given once to ``setup_logging``.

A daemon's stderr is its log: ``setup_logging`` also routes what Python would print there on its own
(uncaught exceptions in the main thread or any other, exceptions it ignores, warnings) through the log,
so that in JSON every line of it parses. In JSON it also takes over file descriptor 2 itself: gRPC's C core
(and OpenSSL, and any C library) writes its own lines there ("I1130 14:01:44.89 16652
ssl_transport_security.cc:2563] Handshake failed ..."); a thread reads them from a pipe and logs each one
(logger ``grpc.core`` with its level and source, or ``stderr`` for anything else).
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import functools
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


_CONTEXT: ContextVar[Mapping[str, Any]] = ContextVar("zcrepl_log_context", default=MappingProxyType({}))


def kv(**fields: Any) -> dict[str, Any]:
    """Wrap fields for ``extra=``; kept under one key so they never clash with LogRecord attributes."""
    return {"kv": fields}


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Fields for every line logged inside the block by this thread (or asyncio task); nested blocks add."""
    token = _CONTEXT.set(MappingProxyType({**_CONTEXT.get(), **fields}))
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def context_fields() -> Mapping[str, Any]:
    """The fields ``log_context`` set for this thread or task."""
    return _CONTEXT.get()


def carry(fn: Callable[P, R], **fields: Any) -> Callable[P, R]:
    """``fn`` run in a copy of the caller's log context plus ``fields``: the target of a thread the caller
    starts (a new thread starts with an empty context). One per thread: a context runs in one at a time."""
    ctx = contextvars.copy_context()

    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        with log_context(**fields):
            return fn(*args, **kwargs)

    return functools.partial(ctx.run, run)  # type: ignore[return-value]


@functools.cache
def _watch_id_base() -> int:
    from zcrepl.core.watchtypes import WATCH_ID_BASE  # here: zc-ctl imports this module and needs none of that

    return WATCH_ID_BASE


def attempt_fields(job_id: int, attempt: int) -> dict[str, int]:
    """The log fields of a data-plane (job id, attempt): ``job`` and ``attempt``, or for a watch rule's
    sessions (whose data-plane job id is ``WATCH_ID_BASE`` + the rule's id) ``rule`` and ``epoch``."""
    if job_id >= _watch_id_base():
        return {"rule": job_id - _watch_id_base(), "epoch": attempt}
    return {"job": job_id, "attempt": attempt}


class _ContextFilter(logging.Filter):
    """Adds the context's fields to a record, after its own (a handler filter runs in the emitting thread),
    and names a watch rule's data-plane job id as the rule it is."""

    def filter(self, record: logging.LogRecord) -> bool:
        own = getattr(record, "kv", None)
        job = own.get("job") if own else None
        if isinstance(job, int) and job >= _watch_id_base() and own is not None:
            base = _watch_id_base()
            own = {("rule" if k == "job" else k): (job - base if k == "job" else v) for k, v in own.items()}
            record.kv = own
        ctx = _CONTEXT.get()
        if ctx:
            own = own or {}
            record.kv = {**own, **{k: v for k, v in ctx.items() if k not in own}}
        return True


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
    """One JSON object per line: ts (seconds since the epoch), level, logger, msg, the daemon's ``static``
    fields, then the line's own; ``exc`` holds a traceback (its newlines escaped, as JSON strings are)."""

    def __init__(self, static: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.static = dict(static or {})

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **self.static,
        }
        for key, value in getattr(record, "kv", {}).items():
            if isinstance(value, bytes):  # a name, shown as the CLI shows it (escaped, never raw bytes)
                from zcrepl.core.paths import show

                value = show(value)
            doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        elif record.stack_info:
            doc["stack"] = record.stack_info
        return json.dumps(doc, default=str)


_uncaught = logging.getLogger("zcrepl.uncaught")
# absl's prefix, as gRPC's C core writes it: severity letter, MMDD, time, thread id, file:line]
_ABSL = re.compile(r"([IWEF])\d{4} [\d:.]+\s+\d+ ([^\]\s]+:\d+)\] ?(.*)")
_ABSL_LEVEL = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}
_MAX_LINE = 64 << 10  # a longer run of bytes without a newline is logged in pieces


def _log_stderr_line(raw: bytes) -> None:
    line = raw.decode("utf-8", "backslashreplace").rstrip("\r")
    if not line.strip():
        return
    m = _ABSL.fullmatch(line)
    if m:
        logging.getLogger("grpc.core").log(_ABSL_LEVEL[m[1]], m[3], extra=kv(source=m[2]))
    else:
        logging.getLogger("stderr").warning(line)


def _pump(fd: int) -> None:
    pending = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            chunk = b""
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            _log_stderr_line(raw)
        while len(pending) > _MAX_LINE:
            _log_stderr_line(pending[:_MAX_LINE])
            pending = pending[_MAX_LINE:]
    if pending:
        _log_stderr_line(pending)
    os.close(fd)


def _take_over_fd2() -> Any:
    """Point fd 2 at a pipe whose lines a thread logs; returns a stream on the real stderr for the handler.

    At exit fd 2 is pointed back, which closes the pipe's last write end: the thread logs what is left and ends.
    """
    sys.stderr.flush()
    real = os.dup(2)
    r, w = os.pipe()
    os.dup2(w, 2)
    os.close(w)
    pump = threading.Thread(target=_pump, args=(r,), name="zc-stderr", daemon=True)
    pump.start()

    def restore() -> None:
        sys.stderr.flush()
        os.dup2(real, 2)
        pump.join(2.0)

    atexit.register(restore)
    return os.fdopen(os.dup(real), "w", buffering=1, encoding="utf-8", errors="backslashreplace")


def _excepthook(tp: type[BaseException], value: BaseException, tb: Any) -> None:
    _uncaught.critical("uncaught exception", exc_info=(tp, value, tb))


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else ""
    exc = (args.exc_type, args.exc_value, args.exc_traceback) if args.exc_value is not None else None
    _uncaught.error("uncaught exception in a thread", exc_info=exc, extra=kv(thread=name, error=args.exc_type.__name__))


def _unraisablehook(u: Any) -> None:
    exc = (type(u.exc_value), u.exc_value, u.exc_traceback) if u.exc_value is not None else None
    _uncaught.warning(u.err_msg or "exception ignored", exc_info=exc, extra=kv(object=repr(u.object)[:200]))


def setup_logging(level: str = "info", fmt: str = "kv", stream: Any = None,
                  static: Mapping[str, Any] | None = None, hooks: bool = True) -> None:
    """Configure the root logger once per daemon process (stderr by default, for journald).

    ``static``: fields every JSON line carries (the daemon's ``service``; an agent's ``host``). ``hooks``:
    route uncaught exceptions, ignored ones and warnings through the log too, and in JSON what C code
    writes to fd 2 (a daemon's whole process; leave it off in a process that has hooks of its own, such as
    a test runner).
    """
    if stream is None and hooks and fmt == "json":
        stream = _take_over_fd2()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JSONFormatter(static) if fmt == "json" else KVFormatter())
    handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    if hooks:
        sys.excepthook = _excepthook
        threading.excepthook = _thread_excepthook
        sys.unraisablehook = _unraisablehook
        logging.captureWarnings(True)
    # grpc's own logger is chatty at INFO about benign reconnects.
    logging.getLogger("grpc").setLevel(max(logging.WARNING, root.level))
    # watchdog logs every inotify event at debug: thousands of lines a second under a burst of changes.
    logging.getLogger("watchdog").setLevel(max(logging.INFO, root.level))
