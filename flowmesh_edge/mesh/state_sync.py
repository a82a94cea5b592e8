"""State sync (NODE_STATE_SYNC): each member's versioned state, everywhere.

Each node owns its state (fps, battery, location...). ``update`` merges into
it, bumps its version and broadcasts the whole state. Every member keeps the
newest copy of every other member's state, by the rule in ``state.py``.
Anti-entropy: application heartbeats carry the sender's state version; a
member that sees a version newer than its copy (or has no copy) pulls the
state with a routed ``{"pull": true}``, answered with the state.
"""

from __future__ import annotations

from collections.abc import Mapping

from .application import Application, Host, MeshMessage
from .membership import MemberEvent, PeerInfo
from .state import newer
from .wire import MessageType

#: (incarnation, version, state) of a member's state copy.
Stamped = tuple[int, int, dict]


class StateSync(Application):
    types = frozenset({MessageType.NODE_STATE_SYNC})

    def __init__(self) -> None:
        self.state: dict = {}
        self.version = 0
        self._incarnation = 0  #: this node's incarnation when its state last changed
        self.remote: dict[str, Stamped] = {}

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
        return True

    def heartbeat(self, sender: str, incarnation: int, version: int) -> None:
        """``sender`` (at ``incarnation``) says its state is at ``version``: pull it if newer."""
        known = self.remote.get(sender)
        if known is None or (incarnation, version) > known[:2] and version > 0:
            self.host.send_routed(MessageType.NODE_STATE_SYNC, sender, {"pull": True})

    def member_event(self, event: MemberEvent) -> None:
        if event.kind == "removed":
            self.remote.pop(event.node_id, None)

    def annotate(self, peers: Mapping[str, PeerInfo]) -> None:
        """Copy each member's newest known state onto its PeerInfo."""
        for node, (_, version, state) in self.remote.items():
            peer = peers.get(node)
            if peer is not None:
                peer.node_state, peer.version = state, version
