"""Exponential backoff with full jitter, as a pure function of the attempt number."""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff_delay(
    attempt: int, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """Delay before retry number ``attempt`` (1-based): uniform in [d/2, d], d = min(cap, base * 2**(attempt-1)).

    Half-jitter keeps retries of many jobs apart without ever retrying immediately.
    """
    if attempt < 1:
        return 0.0
    d = min(cap, base * (2 ** min(attempt - 1, 30)))
    return d / 2 + rand() * d / 2
