"""zcrepl.core.units: the one formatter of bytes and rates (controller reasons, zc-ctl tables and messages)."""

from __future__ import annotations

import pytest

from zcrepl.core.units import GiB, KiB, MiB, TiB, rate, size


@pytest.mark.parametrize(("n", "text"), [(0, "0 B"), (1023, "1023 B"), (KiB, "1.0 KiB"), (1536, "1.5 KiB"),
                                         (MiB * 3.25, "3.2 MiB"), (GiB - 1, "1024.0 MiB"), (5 * GiB, "5.0 GiB"),
                                         (2 * TiB, "2.0 TiB"), (-3 * KiB, "-3.0 KiB")])
def test_size(n: float, text: str) -> None:
    assert size(n) == text


def test_rate() -> None:
    assert rate(50 * MiB) == "50.0 MiB/s"
