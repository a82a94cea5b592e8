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
#: Seconds a database call may take (the agent's ``--db-timeout``) before the
#: path is called silent: the call is abandoned, the connection dropped and a
#: new one opened with the usual backoff. It is also a device role's
#: ``statement_timeout`` (flowmesh devices add) and, in the kernel, how long
#: sent data may stay unacknowledged (``tcp_user_timeout``). Longer tolerates
#: a slower link; shorter notices a dead one (a NAT entry dropped) sooner.
CALL_TIMEOUT_S = 10.0
#: TCP keepalive on every connection, so an idle connection whose path died is
#: noticed without waiting for the next call: probes start after IDLE seconds
#: of silence, every INTERVAL seconds, and COUNT unanswered probes drop the
#: connection (5 + 2 x 3 = 11 s). Unix sockets ignore them.
KEEPALIVES_IDLE_S = 5
KEEPALIVES_INTERVAL_S = 2
KEEPALIVES_COUNT = 3
#: How FlowMesh's connections name themselves in pg_stat_activity (the agent
#: says "flowmesh-edge", the exporter "flowmesh-exporter").
APPLICATION_NAME = "flowmesh"


def data_dir() -> Path:
    """Where FlowMesh keeps its state: ``$FLOWMESH_DATA_DIR`` or the user data directory."""
    configured = os.environ.get(DATA_DIR_ENV)
    path = Path(configured) if configured else Path(platformdirs.user_data_dir("flowmesh"))
    return path.expanduser().resolve()
