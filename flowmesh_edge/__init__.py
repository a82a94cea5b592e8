"""FlowMesh edge agent: runs on every device and reports to Postgres."""

from .agent import Agent, AgentStats
from .config import AgentConfig
from .mesh import MeshConfig, MeshMessage, MeshNode, MessageType, PeerInfo
from .outbox import Entry, Outbox
from .shipper import Rejected, Shipper, ShipReport, Unreachable

__all__ = [
    "Agent", "AgentConfig", "AgentStats", "Entry", "MeshConfig", "MeshMessage", "MeshNode",
    "MessageType", "Outbox", "PeerInfo", "Rejected", "ShipReport", "Shipper", "Unreachable",
]
