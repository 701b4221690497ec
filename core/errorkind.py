"""Bounded kinds for free-text errors and wait reasons, so metrics can label by them.

Messages name hosts and paths and carry figures; a label must not. These tables map a message to one of a
few fixed words by the phrases the code that writes them uses; anything unrecognised is ``other``.
"""

from __future__ import annotations

import re

# First match wins: the more specific phrases come first.
_ERRORS: tuple[tuple[str, re.Pattern[str]], ...] = tuple((kind, re.compile(rx, re.I)) for kind, rx in (
    ("cancelled", r"cancelled|shutting down"),
    ("ready_timeout", r"did not prepare to receive"),
    ("stalled", r"stalled|no report from"),
    ("host_offline", r"went offline|re-registered|not connected|offline|out of reach|came back without"),
    ("no_space", r"no space|not enough space|free on|ENOSPC|(disk|filesystem) (is )?full|quota"),
    ("permission", r"permission|not permitted|EACCES|EPERM|refused by the export policy"),
    ("tls", r"\btls\b|certificate|handshake"),
    ("protocol", r"protocol|malformed|unexpected frame|ticket|header|too many|too large|lying"),
    ("timeout", r"timed? ?out|deadline"),
    ("network", r"connection|reset by peer|broken pipe|unreachable|EPIPE|ECONNRESET|network"),
    ("not_found", r"no such|not found|does not exist|missing"),
    ("io", r"input/output|EIO|read-only file system|I/O error"),
))
ERROR_KINDS: tuple[str, ...] = (*(k for k, _ in _ERRORS), "other")

_WAITS: tuple[tuple[str, re.Pattern[str]], ...] = tuple((kind, re.compile(rx)) for kind, rx in (
    ("retry", r"^retry |waiting: retry in"),
    ("host_offline", r"is offline"),
    ("host_jobs", r"already runs \d+ jobs"),
    ("streams", r"data streams \(limit|carries \d+ streams"),
    ("fanout", r"already sending a copy"),
    ("overlap", r"is writing to"),
    ("health_unknown", r"reported no health|health is \d+s old"),
    ("disk_space", r" free on .*needs "),
    ("cpu", r" CPU \d+% busy"),
    ("load", r" load [\d.]+ per core"),
    ("disk_busy", r" disk \d+% busy"),
    ("network", r" network \d+% used"),
))
WAIT_KINDS: tuple[str, ...] = (*(k for k, _ in _WAITS), "other")


def error_kind(message: str) -> str:
    """``"hostB went offline during the transfer (...)"`` -> ``"host_offline"``; one of ERROR_KINDS."""
    return next((kind for kind, rx in _ERRORS if rx.search(message)), "other")


def wait_kind(reason: str) -> str:
    """The first blocker named in a scheduler wait reason, as one of WAIT_KINDS."""
    found = [(m.start(), kind) for kind, rx in _WAITS if (m := rx.search(reason))]
    return min(found)[1] if found else "other"
