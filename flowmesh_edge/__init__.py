"""FlowMesh edge agent: runs on every device and reports to Postgres.

The names below are loaded on first use (PEP 562), so that importing one part,
such as ``flowmesh_edge.mesh`` in a mesh-only process, does not load the
agent, the outbox (sqlite3) or the shipper (psycopg).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

#: exported name -> the submodule that defines it
_EXPORTS = {
    "Agent": ".agent", "AgentStats": ".agent",
    "AgentConfig": ".config",
    "MeshConfig": ".mesh", "MeshMessage": ".mesh", "MeshNode": ".mesh", "MessageType": ".mesh",
    "PeerInfo": ".mesh",
    "Entry": ".outbox", "Outbox": ".outbox",
    "Rejected": ".shipper", "Shipper": ".shipper", "ShipReport": ".shipper",
    "Unreachable": ".shipper",
}

__all__ = [
    "Agent", "AgentConfig", "AgentStats", "Entry", "MeshConfig", "MeshMessage", "MeshNode",
    "MessageType", "Outbox", "PeerInfo", "Rejected", "ShipReport", "Shipper", "Unreachable",
]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, eagerly
    from .agent import Agent, AgentStats
    from .config import AgentConfig
    from .mesh import MeshConfig, MeshMessage, MeshNode, MessageType, PeerInfo
    from .outbox import Entry, Outbox
    from .shipper import Rejected, Shipper, ShipReport, Unreachable
