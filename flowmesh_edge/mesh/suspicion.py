"""Suspicion with confirmations (Lifeguard, as memberlist implements it).

A suspicion starts with the maximum timeout; every independent confirmation
(another member suspecting the same incarnation) shrinks the remaining time
logarithmically toward the minimum:

    timeout(c) = max(min, max - (max - min) * log(c + 1) / log(k + 1))

where c is the confirmations received and k the confirmations expected.
"""

from __future__ import annotations

import math


class Suspicion:
    def __init__(self, origin: str, started: float, min_s: float, max_s: float, expected: int):
        self.started = started
        self.min_s = min_s
        self.max_s = max_s
        self.expected = max(expected, 0)
        self.confirmers: set[str] = {origin}

    def confirm(self, origin: str) -> bool:
        """Count ``origin``'s confirmation; True when it was new."""
        if origin in self.confirmers or len(self.confirmers) > self.expected:
            return False
        self.confirmers.add(origin)
        return True

    def timeout_s(self) -> float:
        if self.expected == 0:
            return self.min_s
        c = len(self.confirmers) - 1
        frac = math.log(c + 1) / math.log(self.expected + 1)
        return max(self.min_s, self.max_s - (self.max_s - self.min_s) * frac)

    def deadline(self) -> float:
        return self.started + self.timeout_s()
