"""Test fixtures: one real PostgreSQL per session, one database per test.

The embedded server (the same one users run, as a non-root user when the
tests run as root) starts once in a temporary directory. pytest-postgresql's
DatabaseJanitor manages the databases on it: a template database is migrated
once through the Alembic chain, and every test gets its own
``CREATE DATABASE ... TEMPLATE`` copy, dropped afterwards (its connections
terminated first), so tests are isolated and fast. No mock of the database
anywhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from pytest_postgresql.janitor import DatabaseJanitor

from flowmesh import embedded, migrations, pooler

TEMPLATE = "flowmesh_template"


@contextlib.contextmanager
def server_directory(prefix: str) -> Iterator[Path]:
    """A directory for a server the tests start, removed afterwards.

    Not under pytest's tmp_path: as root the servers run as another user, and
    any other pytest session started meanwhile resets /tmp/pytest-of-root to
    mode 0700, which would lock a running server out of its own files."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server():
    with server_directory("flowmesh-test-pg-") as base, \
            embedded.package().get_server(base / "data", cleanup_mode="delete") as server:
        yield server


def janitor(pg_server, dbname: str, **kwargs) -> DatabaseJanitor:
    """A janitor for database ``dbname`` on the session's server (over its socket)."""
    info = pg_server.get_postmaster_info()
    return DatabaseJanitor(user="postgres", host=str(info.socket_dir), port=info.port, dbname=dbname,
                           connection_timeout=10, **kwargs)


@pytest.fixture(scope="session")
def template_url(pg_server) -> Iterator[str]:
    with janitor(pg_server, TEMPLATE, as_template=True) as template:
        url = pg_server.get_uri(database=TEMPLATE)
        template.load(lambda **_: migrations.upgrade(url))
        yield url


@contextlib.contextmanager
def scratch_database(pg_server, prefix: str, template: str | None = None) -> Iterator[str]:
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with janitor(pg_server, name, template_dbname=template):
        yield pg_server.get_uri(database=name)


ROUTES = ("direct", "pooled")


@pytest.fixture
def route(request) -> TestPooler | None:
    """How the test reaches its database: directly (None), or through the session's
    PgBouncer when a test marked ``pooler`` runs in its "pooled" variant."""
    if getattr(request, "param", "direct") == "pooled":
        return request.getfixturevalue("pgbouncer")
    return None


@pytest.fixture(autouse=True)
def _own_meshes_file(monkeypatch, tmp_path_factory):
    """An agent a test starts saves the meshes it joins in a file of the test's own:
    never the user's meshes.json, never another test's (which it would rejoin)."""
    monkeypatch.setenv("FLOWMESH_MESHES_FILE", str(tmp_path_factory.mktemp("meshes") / "meshes.json"))


def pytest_configure(config):
    config.addinivalue_line("markers", "pooler: runs twice, directly and through PgBouncer "
                            "in transaction mode (the db_url and proxy fixtures)")


def pytest_generate_tests(metafunc):
    if metafunc.definition.get_closest_marker("pooler") and "route" in metafunc.fixturenames:
        metafunc.parametrize("route", ROUTES, indirect=True)


@pytest.fixture
def db_url(pg_server, template_url, route) -> Iterator[str]:
    """URL of a fresh, fully migrated database for this test (through the pooler in
    the "pooled" variant of a test marked ``pooler``)."""
    with scratch_database(pg_server, "test", TEMPLATE) as url:
        yield route.pooled(url) if route else url


class TestPooler:
    """The session's PgBouncer in front of ``pg_server`` (flowmesh/pooler.py)."""

    def __init__(self, pg_server, handle: pooler.Pooler):
        self.pg_server = pg_server
        self.handle = handle

    def pooled(self, server_url: str) -> str:
        """The operator's URL of the same database, through the pooler; the database
        gets the password look-up, so device roles can log in to it too."""
        pooler.prepare_database(server_url)
        return self.handle.pooled(server_url)

    @property
    def socket_path(self):
        return self.handle.socket_dir / f".s.PGSQL.{self.handle.port()}"


@pytest.fixture(scope="session")
def pgbouncer(pg_server) -> Iterator[TestPooler]:
    """One PgBouncer per session in front of the session's server, on a port the
    kernel picks; skipped (failed under FLOWMESH_NO_SKIP) without pgbouncer."""
    if pooler.binary() is None:
        pytest.skip(pooler.INSTALL_HINT)
    with server_directory("flowmesh-test-pgbouncer-") as base:
        handle = pooler.Pooler(base / "pgbouncer")
        info = pg_server.get_postmaster_info()
        pooler.start(handle, pg_server.get_uri(), server_host=str(info.socket_dir), server_port=info.port,
                     preferred_port=None)
        try:
            yield TestPooler(pg_server, handle)
        finally:
            pooler.stop(handle)


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


#: pg_hba.conf lines that make device credentials (members of flowmesh_device,
#: sql/0013) authenticate by password, as on any real server, while the
#: embedded test server trusts everyone else on its socket. First match wins.
DEVICE_HBA = ("# flowmesh tests: device credentials authenticate by password\n"
              "local all +flowmesh_device scram-sha-256\n"
              "host all +flowmesh_device 127.0.0.1/32 scram-sha-256\n")


@pytest.fixture(scope="session")
def device_auth(pg_server, template_url) -> None:
    """Password authentication for device credentials on the session's server
    (the group role exists once the template is migrated)."""
    admin = pg_server.get_uri()
    with psycopg.connect(admin, autocommit=True) as c:
        (hba_file,) = c.execute("show hba_file").fetchone()
        hba = Path(hba_file)
        if DEVICE_HBA not in hba.read_text():
            hba.write_text(DEVICE_HBA + hba.read_text())
        (before,) = c.execute("select pg_conf_load_time()").fetchone()
        c.execute("select pg_reload_conf()")

    def reloaded() -> bool:  # a new session sees the postmaster's load time
        with psycopg.connect(admin) as probe:
            return probe.execute("select pg_conf_load_time() > %s", (before,)).fetchone()[0]

    wait_for(reloaded, timeout=10, interval=0.05)


@pytest.fixture
def device_roles_dropped(db_url) -> Iterator[None]:
    """Device roles created in this test's database are dropped afterwards (roles
    are cluster-wide; the database is not)."""
    yield
    with psycopg.connect(db_url, autocommit=True) as c:
        for (role,) in c.execute("select role_name from flowmesh.device_credentials").fetchall():
            c.execute("select pg_terminate_backend(pid) from pg_stat_activity where usename = %s",
                      (role,))
            c.execute(f'drop role if exists "{role}"')


@pytest.fixture
def proxy(pg_server, route):
    """A cuttable loopback TCP path to the test server, or to its pooler when the
    test runs through it (see tests/support/proxy.py)."""
    from tests.support.proxy import PgProxy

    info = pg_server.get_postmaster_info()
    target = route.socket_path if route else info.socket_dir / f".s.PGSQL.{info.port}"
    p = PgProxy(target).start()
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


def session_ended(conn: psycopg.Connection) -> bool:
    """Whether the server has ended ``conn``'s session (a query on it fails)."""
    try:
        conn.execute("select 1")
    except psycopg.OperationalError:
        return True
    return False


async def until(predicate, timeout: float = 15.0, interval: float = 0.02, *, blocking: bool = False
                ) -> float:
    """Await ``predicate`` becoming truthy, in loop time (real or virtual); return the wait.

    A predicate that does I/O (a database query, the outbox) says ``blocking=True``
    and runs in a worker thread, so the event loop under test never waits on it.
    """
    import asyncio

    loop = asyncio.get_running_loop()
    start = loop.time()
    while not (await asyncio.to_thread(predicate) if blocking else predicate()):
        if loop.time() - start > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
    return loop.time() - start


#: With this set (CI sets it), a skipped test fails instead: CI's machine can
#: run every test, so a skip there means a missing package or privilege. Tests
#: marked ``hardware`` are exempt: no CI machine has the hardware, they are opt-in.
STRICT_SKIPS_ENV = "FLOWMESH_NO_SKIP"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get(STRICT_SKIPS_ENV) and not hasattr(report, "wasxfail") \
            and item.get_closest_marker("hardware") is None:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped where {STRICT_SKIPS_ENV} forbids skips: {reason}"
