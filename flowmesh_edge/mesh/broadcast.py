"""The gossip queue and the seen-set.

TransmitLimitedQueue (after memberlist): each queued item is sent a bounded
number of times, least-sent first, so a fresh update spreads before old ones;
an update about a node replaces any queued update about the same node.

SeenSet: message ids already handled, bounded in size and age, so a broadcast
is delivered once and never loops.
"""

from __future__ import annotations

import operator
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(order=True)
class _Item:
    transmits: int
    order: int
    key: str = field(compare=False)
    payload: bytes = field(compare=False)


_LEAST_SENT_NEWEST_FIRST = operator.attrgetter("transmits", "order")  # C-level, not __lt__


class TransmitLimitedQueue:
    def __init__(self, limit: Callable[[], int]):
        self._limit = limit
        self._items: dict[str, _Item] = {}
        self._order = 0

    def __len__(self) -> int:
        return len(self._items)

    def queue(self, key: str, payload: bytes) -> None:
        """Queue ``payload``; an item with the same key is replaced (it is outdated)."""
        self._order += 1
        self._items[key] = _Item(0, -self._order, key, payload)

    def take(self, budget: int, overhead: int = 0) -> list[bytes]:
        """Payloads that fit in ``budget`` bytes (``overhead`` per item), least-sent first."""
        chosen: list[bytes] = []
        limit = self._limit()
        for item in sorted(self._items.values(), key=_LEAST_SENT_NEWEST_FIRST):
            cost = len(item.payload) + overhead
            if cost > budget:
                continue
            budget -= cost
            chosen.append(item.payload)
            item.transmits += 1
            if item.transmits >= limit:
                del self._items[item.key]
        return chosen

    def discard(self, key: str) -> None:
        self._items.pop(key, None)


class SeenSet:
    def __init__(self, size: int, ttl_s: float, clock: Callable[[], float]):
        self.size = size
        self.ttl_s = ttl_s
        self._clock = clock
        self._seen: OrderedDict[tuple[str, int], float] = OrderedDict()

    def add(self, key: tuple[str, int]) -> bool:
        """Record ``key``; True when it is new."""
        now = self._clock()
        while self._seen:
            oldest_key, at = next(iter(self._seen.items()))
            if now - at <= self.ttl_s and len(self._seen) < self.size:
                break
            self._seen.popitem(last=False)
        if key in self._seen:
            return False
        self._seen[key] = now
        return True

    def __contains__(self, key: tuple[str, int]) -> bool:
        return key in self._seen

    def __len__(self) -> int:
        return len(self._seen)
