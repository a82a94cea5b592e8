"""Alerts (ALERT) and their acknowledgements (ACK).

A ``normal`` alert is a best-effort broadcast. A ``critical`` one is
acknowledged by every member that receives it (a routed ACK back to the
origin, sent again when a copy arrives again, since the first ack may have
been lost). The origin tracks who acknowledged in an :class:`AckTracker` and,
every ``critical_retry_s``, resends the alert straight to each member that has
not, until all have or ``critical_deadline_s`` passed. A member that dies or
leaves meanwhile is reported as departed, not retried.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field, replace

from .application import Application, MeshMessage
from .membership import DEAD
from .stats import AlertStats
from .wire import MessageType

log = logging.getLogger("flowmesh_edge.mesh")

PRIORITIES = ("normal", "critical")


@dataclass
class AlertReport:
    """The outcome of broadcast_alert."""

    message_id: int
    priority: str
    #: Members that acknowledged (critical alerts only).
    acked: set[str] = field(default_factory=set)
    #: Alive members that had not acknowledged by the deadline.
    missing: set[str] = field(default_factory=set)
    #: Members declared dead (or gone) before acknowledging; not retried.
    departed: set[str] = field(default_factory=set)
    #: True when every member alive at sending acknowledged; None for normal alerts.
    complete: bool | None = None
    elapsed_s: float = 0.0


@dataclass
class AckTracker:
    """Who still owes an acknowledgement of one critical alert. Pure state."""

    message_id: int
    pending: set[str]
    acked: set[str] = field(default_factory=set)
    departed: set[str] = field(default_factory=set)

    def ack(self, node: str) -> bool:
        """Record ``node``'s ack; True when it was awaited (not a repeat or a stranger's)."""
        if node not in self.pending:
            return False
        self.pending.discard(node)
        self.acked.add(node)
        return True

    def depart(self, node: str) -> None:
        """``node`` is no longer a member: stop waiting for it, and report it."""
        if node in self.pending:
            self.pending.discard(node)
            self.departed.add(node)

    @property
    def settled(self) -> bool:
        """Nobody left to wait for."""
        return not self.pending

    @property
    def complete(self) -> bool:
        """Every member acknowledged: none missing, none departed."""
        return not self.pending and not self.departed


class Alerts(Application):
    types = frozenset({MessageType.ALERT, MessageType.ACK})

    def __init__(self) -> None:
        self.stats = AlertStats()
        self._trackers: dict[int, tuple[AckTracker, asyncio.Event]] = {}

    async def broadcast(self, alert: dict, priority: str = "normal") -> AlertReport:
        if priority not in PRIORITIES:
            raise ValueError("priority must be 'normal' or 'critical'")
        host, cfg = self.host, self.host.config
        started = host.now()
        env = host.originate(MessageType.ALERT, {"priority": priority, "alert": alert})
        self.stats.sent += 1
        if priority == "normal":
            return AlertReport(env.message_id, priority)
        tracker = AckTracker(env.message_id, {m.node_id for m in host.members.alive()})
        changed = asyncio.Event()
        self._trackers[env.message_id] = (tracker, changed)
        deadline = started + cfg.critical_deadline_s
        try:
            while not tracker.settled and host.now() < deadline:
                changed.clear()
                try:
                    await asyncio.wait_for(changed.wait(),
                                           min(cfg.critical_retry_s, max(deadline - host.now(), 0)))
                    continue
                except TimeoutError:
                    pass
                for node in sorted(tracker.pending):
                    m = host.members.get(node)
                    if m is None or m.status == DEAD:
                        tracker.depart(node)
                        continue
                    host.send_envelope(MessageType.ALERT, replace(env, destination=node))
                    self.stats.retransmits += 1
        finally:
            del self._trackers[env.message_id]
        if tracker.complete:
            self.stats.critical_complete += 1
        else:
            self.stats.critical_incomplete += 1
            log.warning("critical alert %s: no ack from %s by the deadline", env.message_id,
                        ", ".join(sorted(tracker.pending | tracker.departed)))
        return AlertReport(env.message_id, priority, set(tracker.acked), set(tracker.pending),
                           set(tracker.departed), tracker.complete, host.now() - started)

    def receive(self, message: MeshMessage) -> bool:
        if message.type == MessageType.ACK:
            entry = self._trackers.get(_int(message.payload.get("ack")))
            if entry is not None and entry[0].ack(message.origin):
                entry[1].set()
            return False
        self.stats.received += 1
        if message.payload.get("priority") == "critical":
            self._ack(message)
        return True

    def duplicate(self, message: MeshMessage) -> None:
        if message.type == MessageType.ALERT and message.payload.get("priority") == "critical":
            self._ack(message)  # our first ack may have been lost

    def _ack(self, message: MeshMessage) -> None:
        self.host.send_routed(MessageType.ACK, message.origin, {"ack": message.message_id})


def _int(value: object) -> int:
    return value if isinstance(value, int) else -1
