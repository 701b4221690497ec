"""Parsing and display of the operator's ``host:/path`` arguments. Paths stay bytes."""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from zcrepl.core.errors import InvalidPath

if TYPE_CHECKING:  # zc-ctl's parser checks host names with this module: it must not load the dataclasses
    from zcrepl.core.types import Endpoint

MAX_HOST_NAME = 253
"""Bytes in an agent name: a DNS name's limit, so a host's FQDN always fits."""
HOST_NAME_RULE = (f"an agent name is 1 to {MAX_HOST_NAME} characters from A-Z, a-z, 0-9, '.', '_' and '-', "
                  "starting with a letter or a digit (no spaces, control characters or other symbols)")
# ASCII only, so characters are bytes; fullmatch, because '$' would also match before a trailing newline.
_HOST = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_HOST_NAME - 1}}}")


_NAMED_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def show(path: bytes) -> str:
    """Render ``path`` printable and unambiguous for logs and error messages.

    Valid UTF-8 is shown as text. An undecodable byte becomes ``\\xNN``; a non-printable ASCII character
    becomes ``\\n``, ``\\t``, ``\\r`` or ``\\xNN``; any other non-printable code point (C1 controls, bidi
    overrides, line separators, odd spaces) becomes ``\\uNNNN`` or ``\\UNNNNNNNN``; a backslash becomes
    ``\\\\``. Two different byte strings never render the same, and no control character reaches a log.
    """
    out: list[str] = []
    for ch in path.decode("utf-8", "surrogateescape"):
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:  # surrogateescape: one byte that was not valid UTF-8
            out.append(f"\\x{o - 0xDC00:02x}")
        elif ch == "\\":
            out.append("\\\\")
        elif ch.isprintable():
            out.append(ch)
        elif ch in _NAMED_ESCAPES:
            out.append(_NAMED_ESCAPES[ch])
        elif o < 0x80:
            out.append(f"\\x{o:02x}")
        elif o <= 0xFFFF:
            out.append(f"\\u{o:04x}")
        else:
            out.append(f"\\U{o:08x}")
    return "".join(out)


def valid_host_name(name: str) -> bool:
    """True when ``name`` follows ``HOST_NAME_RULE`` (the agent name pattern, documented in the README)."""
    return _HOST.fullmatch(name) is not None


def show_name(name: str, limit: int = 64) -> str:
    """A name from a peer, printable and short enough for one line of an error message."""
    raw = name.encode("utf-8", "surrogateescape")
    cut = show(raw[:limit])
    return cut + f"... ({len(raw)} bytes)" if len(raw) > limit else cut


def parse_endpoint(arg: str) -> Endpoint:
    """``hostA:/srv/data`` -> Endpoint. The path must be absolute and canonical (no ``..``, ``.``, ``//``).

    argv arrives decoded with surrogateescape; ``os.fsencode`` recovers the exact bytes.
    """
    host, sep, path = arg.partition(":")
    if not sep or not host:
        raise InvalidPath(f"{arg!r} is not HOST:/PATH; write it like hostA:/srv/data (run 'zc-ctl agents' for hosts)")
    if not valid_host_name(host):
        raise InvalidPath(f"'{show_name(host)}' is not a valid host name: {HOST_NAME_RULE}")
    raw = os.fsencode(path)
    from zcrepl.core.types import Endpoint

    return Endpoint(host=host, path=canonical_abs(raw, what=f"{host}:{path}"))


def canonical_abs(raw: bytes, what: str = "") -> bytes:
    """Validate an absolute path; a trailing slash is accepted and dropped (``src/`` means contents)."""
    label = what or show(raw)
    if not raw.startswith(b"/"):
        raise InvalidPath(f"{label}: the path must be absolute (start with '/')")
    if b"\0" in raw:
        raise InvalidPath(f"{label}: the path contains a NUL byte")
    if len(raw) > 4096:
        raise InvalidPath(f"{label}: the path is longer than 4096 bytes")
    trimmed = raw.rstrip(b"/") or b"/"
    if trimmed == b"/":
        return trimmed
    for part in trimmed.split(b"/")[1:]:
        if part in (b"", b".", b".."):
            raise InvalidPath(f"{label}: the path must be canonical (no '//', '.' or '..' components)")
    return trimmed


def relative_to(path: bytes, root: bytes) -> bytes | None:
    """``path`` relative to ``root`` (both canonical absolute), or None when outside it."""
    if root == b"/":
        return path.lstrip(b"/")
    if path == root:
        return b""
    if path.startswith(root + b"/"):
        return path[len(root) + 1 :]
    return None
