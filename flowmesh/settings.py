"""Defaults and environment variables, defined in one place."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

#: Environment variable holding the database URL. When set (or when
#: ``--database-url`` is given) nothing embedded is started.
DATABASE_URL_ENV = "FLOWMESH_DATABASE_URL"
#: Environment variable overriding the data directory (embedded server, outboxes).
DATA_DIR_ENV = "FLOWMESH_DATA_DIR"
#: Name of the database FlowMesh creates inside the embedded server.
EMBEDDED_DATABASE = "flowmesh"
#: Seconds to wait for a database connection before calling it unreachable.
CONNECT_TIMEOUT_S = 5
#: How FlowMesh's connections name themselves in pg_stat_activity (the agent
#: says "flowmesh-edge", the exporter "flowmesh-exporter").
APPLICATION_NAME = "flowmesh"


def data_dir() -> Path:
    """Where FlowMesh keeps its state: ``$FLOWMESH_DATA_DIR`` or the user data directory."""
    configured = os.environ.get(DATA_DIR_ENV)
    path = Path(configured) if configured else Path(platformdirs.user_data_dir("flowmesh"))
    return path.expanduser().resolve()
