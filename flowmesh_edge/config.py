"""The agent's configuration: one dataclass, every default documented here."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

from flowmesh import limits, settings


def default_node_id() -> str:
    """This device's id when none is given: its host name."""
    return socket.gethostname() or "node"


@dataclass
class AgentConfig:
    #: This device's id, unique within its tetrahedron (default: the host name).
    node_id: str = field(default_factory=default_node_id)
    #: Name of the tetrahedron (mesh group) this device belongs to; created on
    #: first registration when the database user may create it.
    tetrahedron: str = "default"
    #: The node's role, recorded on its nodes row (sensor, orchestrator, witness...).
    role: str | None = None
    #: Seconds between heartbeats. Each heartbeat is one outbox row and one
    #: mesh_heartbeats row; 10 s keeps a 1,000-device fleet at 100 rows/s.
    interval_s: float = 10.0
    #: Most heartbeats shipped in one RPC call (the RPC accepts up to
    #: limits.BATCH_MAX_ITEMS).
    batch_size: int = 500
    #: First wait after a failed shipment; doubles on each failure ...
    backoff_initial_s: float = 1.0
    #: ... up to this ceiling, with +-20% jitter so a fleet does not retry in step.
    backoff_max_s: float = 60.0
    #: On SIGINT/SIGTERM, seconds until the agent exits, spent shipping what is
    #: queued; a call still in flight then is abandoned (its batch stays queued).
    flush_timeout_s: float = 5.0
    #: Seconds a database call may take before the path is called silent, the
    #: connection dropped and a new one tried with backoff (see
    #: settings.CALL_TIMEOUT_S for the trade-off).
    db_timeout_s: float = settings.CALL_TIMEOUT_S
    #: Database URL; None means the embedded server in the data directory.
    database_url: str | None = None
    #: Outbox file; None means <data dir>/outbox/<node id>.sqlite3.
    outbox_path: Path | None = None
    #: TCP port of the agent's own endpoints (/health, /network, /gossip/summary,
    #: /map; http_endpoints.py); None: off, nothing listens, nothing is imported.
    #: 0: a free port the kernel picks (logged).
    http_port: int | None = None
    #: Address those endpoints listen on. They are unauthenticated, so loopback by
    #: default; any other address is the operator's choice and is warned of.
    http_bind: str = "127.0.0.1"

    def __post_init__(self) -> None:
        problems = [p for p in [limits.node_id_problem(self.node_id)] if p]
        name_max = limits.TETRAHEDRON_NAME_MAX_CHARS
        if not self.tetrahedron or len(self.tetrahedron) > name_max or not self.tetrahedron.isprintable():
            problems.append(f"tetrahedron name must be 1 to {name_max} printable characters")
        if not self.interval_s > 0:
            problems.append("interval must be greater than 0 seconds")
        if not 1 <= self.batch_size <= limits.BATCH_MAX_ITEMS:
            problems.append(f"batch size must be between 1 and {limits.BATCH_MAX_ITEMS}")
        if not self.flush_timeout_s >= 0:
            problems.append("flush timeout must be 0 seconds or more")
        if not self.db_timeout_s > 0:
            problems.append("database timeout must be greater than 0 seconds")
        if self.http_port is not None and not 0 <= self.http_port <= 65535:
            problems.append("http port must be between 0 and 65535")
        if not self.http_bind:
            problems.append("http bind address must not be empty")
        if not 0 < self.backoff_initial_s <= self.backoff_max_s:
            problems.append("backoff must satisfy 0 < initial <= max")
        if problems:
            raise ValueError("; ".join(problems))

    def resolved_outbox_path(self) -> Path:
        if self.outbox_path is not None:
            return Path(self.outbox_path)
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", self.node_id)
        return settings.data_dir() / "outbox" / f"{safe}.sqlite3"
