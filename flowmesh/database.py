"""Where the database is, and the one place connections are opened.

With no URL, FlowMesh uses the embedded PostgreSQL (see ``embedded.py``),
starting it when it is not running. With a URL (``--database-url`` or
``FLOWMESH_DATABASE_URL``) nothing embedded is started.

Every connection FlowMesh opens, whether a command's, the agent's, the
exporter's pool or Alembic's, comes from :func:`connect` or :func:`pool`, with
the same options (timeouts, keepalives, application name), and a failure to connect always
reads the same: :class:`DatabaseUnreachable` with a one-line reason.
"""

from __future__ import annotations

import math
import os
import socket

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from . import embedded, settings
from .errors import DatabaseUnreachable, FlowMeshError, one_line
from .queries import query


def resolve_url(url: str | None, *, start: bool = True, migrate: bool = True) -> str:
    """The URL to use: the one given, ``$FLOWMESH_DATABASE_URL``, or the embedded server's.

    Only the embedded server is started and migrated here; a server given by
    URL is migrated explicitly (``flowmesh db up --database-url``), never as a
    side effect of running an agent or a monitor.
    """
    url = configured_url(url)
    if url:
        return url
    if not start:
        status = embedded.status()
        if not status.running:
            raise DatabaseUnreachable(
                "the embedded database is not running (start it with `flowmesh db up`)"
            )
        return status.url  # type: ignore[return-value]
    admin_url, url = embedded.start(settings.EMBEDDED_DATABASE)
    create_database(admin_url, settings.EMBEDDED_DATABASE)
    if migrate:
        migrate_when_behind(url)
    return url


def configured_url(url: str | None) -> str | None:
    """The URL given, else ``$FLOWMESH_DATABASE_URL``; None means the embedded server."""
    return url or os.environ.get(settings.DATABASE_URL_ENV) or None


def migrate_when_behind(url: str) -> bool:
    """Upgrade the database when its migrations are behind; True when it migrated.

    The version check needs only psycopg, so an agent on an up-to-date
    database never imports Alembic and SQLAlchemy.
    """
    from . import migrations  # noqa: PLC0415 (keeps the agent's import light)

    with connect(url) as conn:
        if migrations.current_revision(conn) == migrations.head_revision():
            return False
    migrations.upgrade(url)
    return True


def connection_options(application_name: str, *,
                       call_timeout_s: float = settings.CALL_TIMEOUT_S) -> dict:
    """The options every FlowMesh connection is opened with.

    Besides the connect timeout and the name, they make a dead path (a NAT
    entry dropped, a cable pulled: no reset, just silence) fail instead of
    hanging: TCP keepalives catch it on an idle connection, and
    ``tcp_user_timeout`` (milliseconds) while sent data goes unacknowledged.
    A path that still acknowledges but never answers (a wedged proxy) is
    caught by the caller's own deadline (the shipper's, ``--db-timeout``).

    ``prepare_threshold=None``: psycopg never prepares statements on the
    server, because transaction poolers (PgBouncer before 1.21, Supavisor)
    hand each transaction to any server connection, where a statement
    prepared on another one does not exist. The statements are small; the
    cost is negligible.
    """
    return {
        "connect_timeout": max(2, math.ceil(min(settings.CONNECT_TIMEOUT_S, call_timeout_s))),
        "application_name": application_name,
        "keepalives": 1,
        "keepalives_idle": settings.KEEPALIVES_IDLE_S,
        "keepalives_interval": settings.KEEPALIVES_INTERVAL_S,
        "keepalives_count": settings.KEEPALIVES_COUNT,
        "tcp_user_timeout": math.ceil(call_timeout_s * 1000),
        "prepare_threshold": None,
    }


def connect(url: str, *, autocommit: bool = True, application_name: str = settings.APPLICATION_NAME,
            call_timeout_s: float = settings.CALL_TIMEOUT_S, **kwargs) -> psycopg.Connection:
    """Open a connection, raising DatabaseUnreachable with a one-line reason.

    A parameter written in the URL (``?keepalives_idle=30``) wins over the
    default, and the caller's keyword arguments win over both (the shipper's
    connect timeout, capped by the time it has left).
    """
    try:
        options = _options(url, application_name, call_timeout_s)
        return psycopg.connect(url, autocommit=autocommit, **{**options, **kwargs})
    except psycopg.OperationalError as exc:
        raise DatabaseUnreachable(f"cannot reach the database: {one_line(exc)}") from exc
    except psycopg.ProgrammingError as exc:  # a malformed URL
        raise FlowMeshError(f"invalid database URL: {one_line(exc)}") from exc


async def connect_async(url: str, *, autocommit: bool = True,
                        application_name: str = settings.APPLICATION_NAME,
                        call_timeout_s: float = settings.CALL_TIMEOUT_S, **kwargs) -> psycopg.AsyncConnection:
    """:func:`connect` for asyncio (the dashboard's LISTEN connection): the same
    options, the same precedence, the same one-line failures."""
    try:
        options = _options(url, application_name, call_timeout_s)
        return await psycopg.AsyncConnection.connect(url, autocommit=autocommit, **{**options, **kwargs})
    except psycopg.OperationalError as exc:
        raise DatabaseUnreachable(f"cannot reach the database: {one_line(exc)}") from exc
    except psycopg.ProgrammingError as exc:  # a malformed URL
        raise FlowMeshError(f"invalid database URL: {one_line(exc)}") from exc


def _options(url: str, application_name: str, call_timeout_s: float) -> dict:
    """The default options less those the URL itself sets (the URL wins)."""
    given = conninfo_to_dict(url)
    defaults = connection_options(application_name, call_timeout_s=call_timeout_s)
    return {k: v for k, v in defaults.items() if k not in given}


def pool(url: str, *, application_name: str, max_size: int = 2):
    """A small connection pool (the exporter's), opened lazily with the same options."""
    from psycopg_pool import ConnectionPool  # noqa: PLC0415 (only long-running readers pool)

    return ConnectionPool(url, min_size=0, max_size=max_size, open=True,
                          kwargs={"autocommit": True, **connection_options(application_name)})


def cut(conn: psycopg.Connection | psycopg.AsyncConnection) -> None:
    """Shut a connection's socket down, from any thread or task, so a call waiting
    on it fails now (a path gone silent sends no reset). Closing the connection
    is left to its owner: libpq is not safe to close under a call in flight;
    shutting a socket is. Cancelling the call instead would send a cancel
    request and wait seconds for an answer the silent path never brings."""
    try:
        fd = conn.pgconn.socket
    except psycopg.Error:
        return  # already closed
    try:
        with socket.socket(fileno=os.dup(fd)) as dup:
            dup.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # closed meanwhile, or never connected


def create_database(admin_url: str, name: str) -> bool:
    """Create database ``name`` unless it exists; True when this call created it."""
    with connect(admin_url) as conn:
        if conn.execute(query("database_exists"), {"name": name}).fetchone():
            return False
        try:
            conn.execute(sql.SQL(query("create_database")).format(database=sql.Identifier(name)))
        except psycopg.errors.DuplicateDatabase:
            return False  # created concurrently by another FlowMesh process
    return True


def async_pool(url: str, *, application_name: str, max_size: int = 4,
               timeout_s: float = settings.CONNECT_TIMEOUT_S, reconnect_timeout_s: float = 5.0,
               check_timeout_s: float = 2.0):
    """An asyncio pool (the dashboard's), opened by the caller (``await pool.open()``).

    Every connection is checked when lent (one empty round trip, which must
    answer within ``check_timeout_s``), so the first request after an outage,
    or after a path went silent, gets a live connection rather than a dead one.
    ``timeout_s`` bounds how long a caller waits for a connection (then
    ``PoolTimeout``, an outage for :func:`errors.describe`). A connection that
    fails its check has the pool's other idle connections replaced with it.
    While the database
    is away the pool retries a connection with backoff for
    ``reconnect_timeout_s``, then gives up until the next caller asks: the
    backoff never grows past that, so the pool recovers within a few seconds
    of the database coming back.
    """
    import asyncio  # noqa: PLC0415

    from psycopg_pool import AsyncConnectionPool  # noqa: PLC0415 (only the dashboard pools asynchronously)

    draining: set[asyncio.Task] = set()

    async def check(conn: psycopg.AsyncConnection) -> None:
        loop = asyncio.get_running_loop()
        alarm = loop.call_later(check_timeout_s, cut, conn)
        try:
            await AsyncConnectionPool.check_connection(conn)
        except psycopg.OperationalError:
            # what killed this idle connection (a restart, a silent path) killed
            # the others: replace them all now rather than one check each
            task = loop.create_task(pool.drain())
            draining.add(task)
            task.add_done_callback(draining.discard)
            raise
        finally:
            alarm.cancel()

    try:
        options = _options(url, application_name, settings.CALL_TIMEOUT_S)
    except psycopg.ProgrammingError as exc:
        raise FlowMeshError(f"invalid database URL: {one_line(exc)}") from exc
    pool = AsyncConnectionPool(url, min_size=0, max_size=max_size, open=False, timeout=timeout_s,
                               reconnect_timeout=reconnect_timeout_s, check=check,
                               kwargs={"autocommit": True, **options})
    return pool
