"""State sync (NODE_STATE_SYNC): each member's versioned state, everywhere.

Each node owns its state (fps, battery, location...). ``update`` merges into
it, bumps its version and broadcasts the whole state. Every member keeps the
newest copy of every other member's state, by the rule in ``state.py``.
Anti-entropy: every probe and probe ack carries its sender's state stamp,
(incarnation, version) (``wire.py``); a member that sees a stamp newer than
its copy's pulls the state with a routed ``{"pull": true}``, answered with
the state. Members probe each other all the time, so a missed update is
repaired within a probe cycle, with no datagram of its own until then.
"""

from __future__ import annotations

from collections.abc import Mapping

from .application import Application, Host, MeshMessage
from .membership import MemberEvent, PeerInfo
from .state import newer
from .wire import MessageType, Stamp

#: (incarnation, version, state) of a member's state copy.
Stamped = tuple[int, int, dict]
#: Seconds before the same state is pulled again (the first pull or its answer was lost).
PULL_RETRY_S = 1.0


class StateSync(Application):
    types = frozenset({MessageType.NODE_STATE_SYNC})

    def __init__(self) -> None:
        self.state: dict = {}
        self.version = 0
        self._incarnation = 0  #: this node's incarnation when its state last changed
        self.remote: dict[str, Stamped] = {}
        self._pulls: dict[str, tuple[Stamp, float]] = {}  #: member -> (stamp asked for, when)

    def attach(self, host: Host) -> None:
        super().attach(host)
        self._incarnation = host.incarnation

    def set_initial(self, state: dict) -> None:
        """The state a node starts with (version 1)."""
        self.state = dict(state)
        self.version = 1

    def update(self, updates: dict) -> int:
        self.state.update(updates)
        self.version += 1
        self._incarnation = self.host.incarnation
        self.host.originate(MessageType.NODE_STATE_SYNC, self._payload())
        return self.version

    def restamp(self) -> None:
        """Stamp our state at our current incarnation: after a restart below a previous
        boot's incarnation, members hold that boot's state under a higher stamp than
        ours; the new stamp outranks it, and probes carry it to them, who pull."""
        self._incarnation = self.host.incarnation

    def stamp(self) -> Stamp:
        """This node's state stamp, as probes carry it."""
        return self._incarnation, self.version

    def _payload(self) -> dict:
        return {"state": self.state, "version": self.version, "inc": self._incarnation}

    def receive(self, message: MeshMessage) -> bool:
        payload = message.payload
        if payload.get("pull"):
            self.host.send_routed(MessageType.NODE_STATE_SYNC, message.origin, self._payload())
            return True
        state, version, inc = payload.get("state"), payload.get("version"), payload.get("inc", 0)
        if not isinstance(state, dict) or not isinstance(version, int) or not isinstance(inc, int):
            self.host.drop("malformed")
            return True
        candidate = (inc, version, state)
        if newer(candidate, self.remote.get(message.origin)):
            self.remote[message.origin] = candidate
        pull = self._pulls.get(message.origin)
        if pull is not None and pull[0] <= (inc, version):
            del self._pulls[message.origin]
        return True

    def heard(self, sender: str, stamp: Stamp) -> None:
        """``sender``'s state is at ``stamp``: pull it when newer than our copy (a stamp of
        version 0 is a member with no state: nothing to pull)."""
        if stamp[1] == 0:
            return
        known = self.remote.get(sender)
        if known is not None and stamp <= known[:2]:
            return
        now = self.host.now()
        asked = self._pulls.get(sender)
        if asked is not None and stamp <= asked[0] and now - asked[1] < PULL_RETRY_S:
            return  # asked already; the answer is on its way
        self._pulls[sender] = (stamp, now)
        self.host.send_routed(MessageType.NODE_STATE_SYNC, sender, {"pull": True})

    def member_event(self, event: MemberEvent) -> None:
        if event.kind == "removed":
            self.remote.pop(event.node_id, None)
            self._pulls.pop(event.node_id, None)

    def annotate(self, peers: Mapping[str, PeerInfo]) -> None:
        """Copy each member's newest known state onto its PeerInfo."""
        for node, (_, version, state) in self.remote.items():
            peer = peers.get(node)
            if peer is not None:
                peer.node_state, peer.version = state, version
