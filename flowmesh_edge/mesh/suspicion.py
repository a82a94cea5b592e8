"""Suspicion with confirmations (Lifeguard, as memberlist implements it).

A suspicion starts with the maximum timeout; every independent confirmation
(another member suspecting the same incarnation) shrinks the remaining time
logarithmically toward the minimum:

    timeout(c) = max(min, max - (max - min) * log(c + 1) / log(k + 1))

where c is the confirmations received and k the confirmations expected.
With nobody to confirm it (k = 0: a mesh of two), a suspicion runs the
maximum: it is alone by necessity, not because others disagree.

Two refinements of our own, for the node that holds the suspicion:

* **Witnessed.** When the suspicion runs out, the node declares the member
  dead only if it failed to reach it itself lately: within ``witness_s``,
  the minimum timeout plus a probe deadline, so that the failed probe that
  started a confirmed suspicion still counts when its minimum runs out,
  while one that started a lone suspicion (the maximum ago) does not.
  Otherwise it probes the member first, the suspicion postponed meanwhile: a
  node that missed the refutation's gossip must not kill a member it did not
  try to reach.
* **Restarted.** A probe of ours that the suspect answers proves it alive
  now: the suspicion starts over, alone (it has not refuted yet; we told it).
"""

from __future__ import annotations

import math


class Suspicion:
    def __init__(self, origin: str, started: float, min_s: float, max_s: float, expected: int,
                 witness_s: float = 0.0):
        self.origin = origin
        self.witness_s = witness_s or min_s
        self.started = started
        self.min_s = min_s
        self.max_s = max_s
        self.expected = max(expected, 0)
        self.confirmers: set[str] = {origin}
        self.postponed = float("-inf")  #: no deadline before this
        self.witnessed = float("-inf")  #: when this node last failed to reach the suspect itself

    def confirm(self, origin: str) -> bool:
        """Count ``origin``'s confirmation; True when it was new."""
        if origin in self.confirmers or len(self.confirmers) > self.expected:
            return False
        self.confirmers.add(origin)
        return True

    def timeout_s(self) -> float:
        if self.expected == 0:
            return self.max_s
        c = len(self.confirmers) - 1
        frac = math.log(c + 1) / math.log(self.expected + 1)
        return max(self.min_s, self.max_s - (self.max_s - self.min_s) * frac)

    def deadline(self) -> float:
        return max(self.started + self.timeout_s(), self.postponed)

    def witnessed_lately(self, now: float) -> bool:
        """This node itself failed to reach the suspect within the last ``witness_s``."""
        return now - self.witnessed <= self.witness_s

    def restart(self, now: float) -> None:
        """The suspect answered us: start over, alone."""
        self.started = now
        self.confirmers = {self.origin}
        self.postponed = float("-inf")
