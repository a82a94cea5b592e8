"""FlowMesh edge agent: runs on every device and reports to Postgres."""

from .agent import Agent, AgentStats
from .config import AgentConfig
from .outbox import Entry, Outbox
from .shipper import Rejected, Shipper, ShipReport, Unreachable

__all__ = [
    "Agent", "AgentConfig", "AgentStats", "Entry", "Outbox", "Rejected", "ShipReport",
    "Shipper", "Unreachable",
]
