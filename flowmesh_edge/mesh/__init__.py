"""The peer mesh: discovery, SWIM failure detection, gossip, routing, state, alerts."""

from .blocking import BlockingMeshNode
from .config import DEFAULT_PORT, MeshConfig
from .membership import MemberEvent, PeerInfo
from .node import AlertReport, MeshMessage, MeshNode, SearchResult
from .transport import (
    InMemoryNetwork,
    InMemoryTransport,
    LinkConditions,
    LossyTransport,
    Transport,
    UdpTransport,
)
from .wire import MessageType

__all__ = [
    "DEFAULT_PORT", "AlertReport", "BlockingMeshNode", "InMemoryNetwork", "InMemoryTransport",
    "LinkConditions", "LossyTransport", "MemberEvent", "MeshConfig", "MeshMessage", "MeshNode",
    "MessageType", "PeerInfo", "SearchResult", "Transport", "UdpTransport",
]
