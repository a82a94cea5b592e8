"""What to do with an application envelope: pure decisions, no I/O.

Every envelope is handled at most once per node: its (origin, message id) goes
into a seen-set, bounded in size and age. On arrival, in this order:

1. our own message coming back round: an echo (a duplicate);
2. already seen: a duplicate (a broadcast we forwarded coming back round is an
   echo, not a fault);
3. its path already lists this node, yet we never handled it: a loop, refused;
4. addressed to another member: forwarded, unless its hop limit is spent
   (``hop_limit``, decremented at each forward, refused at 1);
5. otherwise delivered here, and a broadcast with TTL left is passed on (TTL
   decremented, this node appended to the path).

A message that did not loop also teaches a route: its origin is reachable
through the member that handed it to us, in ``len(path) + 1`` hops.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, replace

from .broadcast import SeenSet
from .config import MeshConfig
from .wire import Envelope


class Action(enum.Enum):
    ECHO = "echo"  #: our own message came back
    DUPLICATE = "duplicate"  #: handled before
    LOOP = "loop"  #: lists us on its path though we never handled it: refused
    HOP_LIMIT = "hop_limit"  #: for another member, but no hops left: refused
    FORWARD = "forward"  #: for another member: send ``onward`` toward it
    DELIVER = "deliver"  #: for us (or everyone); a broadcast goes ``onward`` too


@dataclass(frozen=True)
class Decision:
    action: Action
    #: FORWARD: the copy to send on; DELIVER: the broadcast's copy to gossip on (or None).
    onward: Envelope | None = None
    #: A route this envelope teaches: (destination, next hop, hops).
    route: tuple[str, str, int] | None = None


@dataclass
class EnvelopeStats:
    seen: int = 0  #: envelopes handled (first copies)
    duplicates: int = 0  #: copies already handled, echoes included
    propagated: int = 0  #: broadcasts passed on
    forwarded: int = 0  #: messages for others passed on toward them


class Envelopes:
    """New envelopes of this node, and the fate of received ones."""

    def __init__(self, self_id: str, config: MeshConfig, clock: Callable[[], float], first_id: int = 1):
        self.self_id = self_id
        self.config = config
        self.seen = SeenSet(config.seen_set_size, config.seen_ttl_s, clock)
        self.stats = EnvelopeStats()
        # a restarted node must not reuse the ids of its previous run, which
        # members still remember as seen: the caller starts at a random point
        self._next_id = first_id & 0xFFFFFFFF

    def new(self, payload: dict, destination: str = "") -> Envelope:
        """A message of ours, already seen, so that it never comes back to us as news."""
        message_id = self._next_id
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF
        env = Envelope(self.self_id, message_id, payload, self.config.ttl, self.config.hop_limit,
                       destination)
        self.seen.add((env.origin, env.message_id))
        return env

    def receive(self, env: Envelope, sender: str) -> Decision:
        """Decide what to do with ``env``, handed to us by ``sender``."""
        if env.origin == self.self_id:
            self.stats.duplicates += 1
            return Decision(Action.ECHO)
        looped = self.self_id in env.path
        route = None if looped else (env.origin, sender, len(env.path) + 1)
        key = (env.origin, env.message_id)
        if key in self.seen:
            self.stats.duplicates += 1
            return Decision(Action.DUPLICATE, route=route)
        if looped:
            return Decision(Action.LOOP)
        self.seen.add(key)
        self.stats.seen += 1
        if env.destination and env.destination != self.self_id:
            if env.hop_limit <= 1:
                return Decision(Action.HOP_LIMIT, route=route)
            self.stats.forwarded += 1
            onward = replace(env, hop_limit=env.hop_limit - 1, ttl=max(env.ttl - 1, 1),
                             path=(*env.path, self.self_id))
            return Decision(Action.FORWARD, onward, route)
        onward = None
        if not env.destination and env.ttl > 1:
            onward = replace(env, ttl=env.ttl - 1, path=(*env.path, self.self_id))
            self.stats.propagated += 1
        return Decision(Action.DELIVER, onward, route)
