"""The route table: which way a message to one member goes. Pure state, no I/O.

A message to a member goes straight to it while the direct path works. The
direct path is *usable* until a probe to the member went unanswered, and
again once a datagram from the member itself arrives after that failure.
When it is not usable, the message goes through a next hop learned from

* an indirect probe answered through a helper (2 hops), and
* the path a received message recorded (origin reached through the member
  that handed it to us, ``len(path) + 1`` hops),

keeping the shortest route heard, each trusted for ``route_ttl_s``. With no
usable direct path and no live route, the caller floods the message by
gossip; the path it travels teaches the way back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Route:
    via: str  #: the next hop
    hops: int
    expires: float  #: clock time after which the route is no longer trusted


class RouteTable:
    def __init__(self, self_id: str, ttl_s: float, clock: Callable[[], float]):
        self.self_id = self_id
        self.ttl_s = ttl_s
        self.clock = clock
        self._routes: dict[str, Route] = {}
        self._direct_ok: dict[str, float] = {}
        self._direct_failed: dict[str, float] = {}

    # -- direct-path health ---------------------------------------------------------
    def heard_from(self, node: str) -> None:
        """A datagram from ``node`` itself arrived: the direct path works."""
        self._direct_ok[node] = self.clock()

    def direct_failed(self, node: str) -> None:
        """A probe straight to ``node`` went unanswered."""
        self._direct_failed[node] = self.clock()

    def direct_usable(self, node: str) -> bool:
        failed = self._direct_failed.get(node)
        if failed is None:
            return True
        ok = self._direct_ok.get(node)
        return ok is not None and ok > failed

    # -- routes ----------------------------------------------------------------------
    def learn(self, dest: str, via: str, hops: int) -> bool:
        """Consider reaching ``dest`` through ``via`` in ``hops``; True when kept.

        Kept when there is no live route yet or this one is no longer; never
        for this node, a neighbour reached through itself, or a member whose
        direct path works (it needs no route).
        """
        if dest in (self.self_id, via) or self.direct_usable(dest):
            return False
        now = self.clock()
        current = self._routes.get(dest)
        if current is not None and current.expires > now and hops > current.hops:
            return False
        self._routes[dest] = Route(via, hops, now + self.ttl_s)
        return True

    def forget(self, node: str) -> None:
        """``node`` left or died: drop what we knew about it, and routes through it."""
        self._routes.pop(node, None)
        self._direct_ok.pop(node, None)
        self._direct_failed.pop(node, None)
        for dest in [d for d, r in self._routes.items() if r.via == node]:
            del self._routes[dest]

    def expire(self) -> None:
        now = self.clock()
        for dest in [d for d, r in self._routes.items() if r.expires <= now]:
            del self._routes[dest]

    def next_hop(self, dest: str, reachable: Callable[[str], bool]) -> str | None:
        """The member to hand a message for ``dest`` to, or None (flood it).

        ``reachable(node)`` says whether ``node`` is a member not known dead.
        """
        route = self._routes.get(dest)
        direct = self.direct_usable(dest)
        if route is not None and route.expires > self.clock() and not direct and reachable(route.via):
            return route.via
        if direct and reachable(dest):
            return dest
        return None

    def routes(self) -> dict[str, tuple[str, int]]:
        """Live routes: destination -> (next hop, hops)."""
        now = self.clock()
        return {d: (r.via, r.hops) for d, r in self._routes.items() if r.expires > now}
