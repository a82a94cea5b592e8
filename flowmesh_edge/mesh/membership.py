"""Who is in the mesh, and how facts about members are merged. Pure state.

Rules (SWIM, with memberlist's refinements):

* ALIVE at incarnation i overrides anything about the member at a lower
  incarnation; a new member joins, a suspect or dead one recovers.
* SUSPECT at i >= the known incarnation turns an alive member suspect and
  starts a suspicion timer; the same suspicion from another member confirms it.
* DEAD at i >= the known incarnation marks the member dead.
* A SUSPECT or DEAD about this node is refuted: it takes a higher
  incarnation and gossips ALIVE.
* Dead members are removed after ``dead_reap_s``; their last incarnation is
  kept as a tombstone so that stale gossip cannot bring them back, while a
  real restart (a higher incarnation) rejoins.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from .address import Address
from .config import MeshConfig
from .suspicion import Suspicion
from .wire import MessageType, Update

ALIVE, SUSPECT, DEAD = "alive", "suspect", "dead"


@dataclass
class PeerInfo:
    """What this node knows about a peer."""

    node_id: str
    address: Address
    status: str
    incarnation: int
    status_since: float  #: loop time of the last status change
    meta: dict = field(default_factory=dict)
    #: Wall-clock time of the last datagram (of any type) received from the peer itself.
    last_heard: float | None = None
    #: The peer's versioned state (fps, battery...; see state_sync.py) and its version.
    node_state: dict = field(default_factory=dict)
    version: int = 0
    #: Its other endpoints, as it advertises them (one per path besides ``address``).
    endpoints: tuple[Address, ...] = ()
    #: The path this node uses to reach it now, and that path's round trip (s),
    #: from the connection train (paths.py); None until a path is chosen.
    path: Address | None = None
    rtt_s: float | None = None

    @property
    def ip_address(self) -> str:
        return self.address.host

    @property
    def port(self) -> int:
        return self.address.port

    def is_alive(self) -> bool:
        return self.status == ALIVE

    def to_dict(self) -> dict:
        return {
            "node_id": self.node_id, "address": str(self.address), "status": self.status,
            "incarnation": self.incarnation, "meta": self.meta,
            "last_heard": self.last_heard, "node_state": self.node_state,
            "version": self.version, "endpoints": [str(a) for a in self.endpoints],
            "path": str(self.path) if self.path else None,
            "rtt_ms": round(self.rtt_s * 1000, 3) if self.rtt_s is not None else None,
        }


@dataclass(frozen=True)
class MemberEvent:
    kind: str  #: joined, suspect, dead, left, recovered, removed
    node_id: str
    incarnation: int


@dataclass(frozen=True)
class Outcome:
    accepted: bool = False  #: news: gossip it further
    event: MemberEvent | None = None
    refute: int | None = None  #: this node must refute at an incarnation above this


#: Most updates a node hears are not news (gossip repeats itself by design).
NOTHING = Outcome()


def decode_meta(raw: bytes) -> dict:
    if not raw:
        return {}
    try:
        meta = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return meta if isinstance(meta, dict) else {}


class MemberList:
    def __init__(self, self_id: str, config: MeshConfig, clock: Callable[[], float]):
        self.self_id = self_id
        self.config = config
        self.clock = clock
        self.members: dict[str, PeerInfo] = {}
        self.suspicions: dict[str, Suspicion] = {}
        self.tombstones: dict[str, tuple[int, float]] = {}  # node -> (incarnation, until)
        self._dead_since: dict[str, float] = {}  # the dead members, and since when

    def __len__(self) -> int:
        return len(self.members)

    def size(self) -> int:
        """Members known, this node included (the n of the config's formulas)."""
        return len(self.members) + 1

    def get(self, node_id: str) -> PeerInfo | None:
        return self.members.get(node_id)

    def alive_or_suspect(self) -> list[PeerInfo]:
        """Members not known dead: the ones worth probing and gossiping to."""
        return [m for m in self.members.values() if m.status != DEAD]

    def alive(self) -> list[PeerInfo]:
        return [m for m in self.members.values() if m.status == ALIVE]

    # -- merging facts ---------------------------------------------------------
    def apply(self, update: Update) -> Outcome:
        if update.kind == MessageType.ALIVE:
            return self._alive(update)
        if update.kind == MessageType.SUSPECT:
            return self._suspect(update)
        return self._dead(update)

    def _set(self, m: PeerInfo, status: str, incarnation: int) -> None:
        m.status = status
        m.incarnation = incarnation
        m.status_since = self.clock()
        if status == DEAD:
            self._dead_since[m.node_id] = m.status_since
        else:
            self._dead_since.pop(m.node_id, None)

    def _alive(self, u: Update) -> Outcome:
        m = self.members.get(u.node)
        if m is not None and u.incarnation <= m.incarnation or u.node == self.self_id:
            return NOTHING
        now = self.clock()
        if m is None:  # (a listed member has no tombstone: its rejoin removed it)
            tomb = self.tombstones.get(u.node)
            if tomb is not None:
                if u.incarnation <= tomb[0] and now < tomb[1]:
                    return NOTHING
                del self.tombstones[u.node]
            self.members[u.node] = PeerInfo(u.node, u.address, ALIVE, u.incarnation, now,
                                            decode_meta(u.meta), endpoints=u.endpoints)
            return Outcome(True, MemberEvent("joined", u.node, u.incarnation))
        previous = m.status
        self._set(m, ALIVE, u.incarnation)
        if u.address.host:
            m.address = u.address
        if u.endpoints:
            m.endpoints = u.endpoints
        if u.meta:
            m.meta = decode_meta(u.meta)
        self.suspicions.pop(u.node, None)
        if previous != ALIVE:
            return Outcome(True, MemberEvent("recovered", u.node, u.incarnation))
        return Outcome(True)

    def _suspect(self, u: Update) -> Outcome:
        if u.node == self.self_id:
            return Outcome(refute=u.incarnation)
        m = self.members.get(u.node)
        if m is None or m.status == DEAD or u.incarnation < m.incarnation:
            return Outcome()
        if m.status == SUSPECT and u.incarnation == m.incarnation:
            suspicion = self.suspicions.get(u.node)
            if suspicion is None:
                return Outcome()
            if u.origin == self.self_id:
                suspicion.witnessed = self.clock()
            if suspicion.confirm(u.origin or "?"):
                return Outcome(True)  # a new confirmation: worth gossiping
            return Outcome()
        self._set(m, SUSPECT, u.incarnation)
        n = self.size()
        # confirmations can only come from live members other than the suspect and us
        expected = min(self.config.suspicion_confirmations, len(self.alive_or_suspect()) - 1)
        least = self.config.suspicion_min_s(n)
        suspicion = self.suspicions[u.node] = Suspicion(
            u.origin or "?", self.clock(), least, self.config.suspicion_max_s(n), expected,
            witness_s=least + self.config.probe_deadline_s())
        if u.origin == self.self_id:
            suspicion.witnessed = suspicion.started
        return Outcome(True, MemberEvent("suspect", u.node, u.incarnation))

    def _dead(self, u: Update) -> Outcome:
        if u.node == self.self_id:
            return Outcome(refute=u.incarnation)
        m = self.members.get(u.node)
        if m is None or m.status == DEAD or u.incarnation < m.incarnation:
            return Outcome()
        self._set(m, DEAD, u.incarnation)
        self.suspicions.pop(u.node, None)
        # a member announcing its own death is leaving gracefully
        kind = "left" if u.origin == u.node else "dead"
        return Outcome(True, MemberEvent(kind, u.node, u.incarnation))

    # -- timers ------------------------------------------------------------------
    def expired_suspicions(self) -> list[PeerInfo]:
        """Suspects whose suspicion ran out (the caller declares them dead)."""
        now = self.clock()
        for node in [n for n in self.suspicions if n not in self.members]:
            del self.suspicions[node]
        return [self.members[node] for node, s in self.suspicions.items() if now >= s.deadline()]

    def postpone_suspicion(self, node: str, until: float) -> None:
        """No death from this suspicion before ``until`` (a probe of ours is out)."""
        suspicion = self.suspicions.get(node)
        if suspicion is not None:
            suspicion.postponed = until

    def restart_suspicion(self, node: str) -> None:
        """The suspect answered a probe of ours: its suspicion starts over, alone."""
        suspicion = self.suspicions.get(node)
        if suspicion is not None:
            suspicion.restart(self.clock())

    def reap(self) -> list[MemberEvent]:
        """Remove members dead for longer than dead_reap_s; keep tombstones."""
        now = self.clock()
        events = []
        for node, since in list(self._dead_since.items()):
            if now - since >= self.config.dead_reap_s:
                m = self.members.pop(node)
                del self._dead_since[node]
                self.tombstones[node] = (m.incarnation, now + self.config.tombstone_s)
                events.append(MemberEvent("removed", node, m.incarnation))
        for node, (_, until) in list(self.tombstones.items()):
            if now >= until:
                del self.tombstones[node]
        return events

    def next_deadline(self) -> float | None:
        """The clock time something is next due (a suspicion running out, a dead member
        to reap, a tombstone to forget), or None when nothing is."""
        due = [s.deadline() for s in self.suspicions.values()]
        due += [since + self.config.dead_reap_s for since in self._dead_since.values()]
        due += [until for _, until in self.tombstones.values()]
        return min(due, default=None)

    def snapshot(self) -> list[Update]:
        """Every member as an update (membership anti-entropy)."""
        kinds = {ALIVE: MessageType.ALIVE, SUSPECT: MessageType.SUSPECT, DEAD: MessageType.DEAD}
        return [Update(kinds[m.status], m.node_id, m.incarnation, m.address, self.self_id,
                       json.dumps(m.meta, separators=(",", ":")).encode() if m.meta else b"",
                       m.endpoints)
                for m in self.members.values()]
