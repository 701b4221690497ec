"""Names of the agent's temp files: in its own namespace, each naming the process that writes it, so a later
sweep can tell a temp whose writer is gone (left by a crash) from one still being written.

The names are re-exported by ``saferoot``, whose validation refuses this namespace in peers' names.
"""

from __future__ import annotations

import hashlib
import os
import random
import re

TEMP_PREFIX = b".zc."
"""The agent's own temp namespace: scanner and watcher ignore names starting with it; peers may not use it."""
MAX_NAME = 255
"""Bytes of one path component (Linux's NAME_MAX): a temp name, cut to fit, never exceeds it."""

_rng = random.Random(os.urandom(16))


def temp_name(leaf: bytes) -> bytes:
    """``TEMP_PREFIX + leaf[:n] + b"." + 8 random hex digits + b"." + WRITER + b".tmp"``, at most ``MAX_NAME``
    bytes, where WRITER names this process (see :func:`writer_token`), so a later sweep can tell that the
    writer of a temp left behind is gone.

    The leaf is cut bytewise (maybe mid UTF-8 sequence): only the agent itself ever looks at temps.
    """
    suffix = b".%08x.%s.tmp" % (_rng.getrandbits(32), writer_token())
    # O_EXCL|O_NOFOLLOW is the real guard against planted names; the random part only avoids
    # collisions, so a urandom-seeded PRNG (no syscall per file) is enough.
    return TEMP_PREFIX + leaf[: MAX_NAME - len(TEMP_PREFIX) - len(suffix)] + suffix


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot, /proc/PID/stat field 22), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat_line = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    return int(stat_line.rsplit(b")", 1)[1].split()[19])


def _host_tag() -> bytes:
    """6 hex digits of this boot and 6 of this pid namespace: pids mean something only within both."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            boot = hashlib.sha256(f.read().strip()).hexdigest()[:6]
    except OSError:
        boot = "000000"
    try:
        ns = hashlib.sha256(os.readlink("/proc/self/ns/pid").encode()).hexdigest()[:6]
    except OSError:
        ns = "000000"
    return (boot + ns).encode()


_WRITER: tuple[int, bytes] = (0, b"")
_WRITER_RE = re.compile(rb"^([0-9a-f]{6})([0-9a-f]{6})-([0-9a-f]+)-([0-9a-f]+)$")


def writer_token() -> bytes:
    """``HOSTTAG-PID-START`` (hex) of this process: enough to know later whether the writer still runs."""
    global _WRITER
    pid = os.getpid()
    if _WRITER[0] != pid:  # computed once per process (again in a forked child)
        _WRITER = (pid, b"%s-%x-%x" % (_host_tag(), pid, process_start(pid) or 0))
    return _WRITER[1]


def writer_gone(name: bytes) -> bool | None:
    """Whether the process that wrote temp ``name`` is gone (True), still runs (False), or cannot be told
    (None: not a temp, a temp without a writer, or one written in another pid namespace, whose pids mean
    nothing here)."""
    if not (name.startswith(TEMP_PREFIX) and name.endswith(b".tmp")):
        return None
    m = _WRITER_RE.match(name[: -len(b".tmp")].rpartition(b".")[2])
    if m is None:
        return None
    ours = writer_token()
    if m.group(1) != ours[:6]:
        return True  # an earlier boot: every process of it is gone
    if m.group(2) != ours[6:12]:
        return None
    return process_start(int(m.group(3), 16)) != int(m.group(4), 16)
