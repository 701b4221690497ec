"""Bytes and rates as people read them (``3.2 GiB``, ``50.0 MiB/s``): the one formatter of the controller's
reasons, zc-ctl's tables and messages. Kept free of imports so zc-ctl's start-up pays nothing for it."""

from __future__ import annotations

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
_SCALES = (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB))


def size(n: float) -> str:
    """``512 B``, ``1.5 KiB`` ... ``2.0 TiB`` (binary units, one decimal above bytes)."""
    for unit, scale in _SCALES:
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def rate(bps: float) -> str:
    """Bytes per second: ``50.0 MiB/s``."""
    return size(bps) + "/s"
