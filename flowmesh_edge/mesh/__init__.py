"""The peer mesh: discovery, SWIM failure detection, gossip, routing, state, alerts."""

from .address import Address
from .alerts import AlertReport
from .application import Application, MeshMessage
from .blocking import BlockingMeshNode
from .config import DEFAULT_PORT, MeshConfig
from .membership import MemberEvent, PeerInfo
from .node import MeshNode
from .search import SearchResult
from .stats import MeshStats
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
    "DEFAULT_PORT", "Address", "AlertReport", "Application", "BlockingMeshNode", "InMemoryNetwork",
    "InMemoryTransport", "LinkConditions", "LossyTransport", "MemberEvent", "MeshConfig", "MeshMessage",
    "MeshNode", "MeshStats", "MessageType", "PeerInfo", "SearchResult", "Transport", "UdpTransport",
]
