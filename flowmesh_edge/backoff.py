"""Exponential backoff with jitter: one schedule for every retry the edge makes
(the shipper while the database is away, a path probed while it is down)."""

from __future__ import annotations

import random
from collections.abc import Callable

#: Each wait is its nominal value times a factor drawn from this range, so a
#: fleet cut off together does not retry in step.
BACKOFF_JITTER = (0.8, 1.2)


def backoff_delay(attempt: int, initial_s: float, max_s: float,
                  uniform: Callable[[float, float], float] = random.uniform) -> float:
    """Seconds to wait after ``attempt + 1`` failures in a row: ``initial_s``
    doubled per failure, capped at ``max_s``, with +-20% jitter (never above ``max_s``)."""
    nominal = min(initial_s * 2 ** min(attempt, 62), max_s)
    return min(nominal * uniform(*BACKOFF_JITTER), max_s)
