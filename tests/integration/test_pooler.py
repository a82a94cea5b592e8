"""PgBouncer in transaction mode in front of the session's server
(flowmesh/pooler.py): devices log in with their own passwords through the
look-up function, many clients share a few server connections, and FlowMesh's
connections survive being moved between server connections."""

from __future__ import annotations

import stat
import uuid

import psycopg
import pytest

from flowmesh import database, pooler
from flowmesh.errors import DatabaseUnreachable
from tests.conftest import db_name


@pytest.fixture
def pooled(pgbouncer, db_url):
    """The test database's operator URL through the pooler (and the look-up installed in it)."""
    return pgbouncer.pooled(db_url)


@pytest.fixture
def device_role(db_url):
    """A non-superuser login role with a SCRAM password, dropped afterwards."""
    name, password = f"device_{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute("set password_encryption = 'scram-sha-256'")
        admin.execute(f"create role {name} login password '{password}'")
    try:
        yield name, password
    finally:
        with psycopg.connect(db_url, autocommit=True) as admin:
            admin.execute("select pg_terminate_backend(pid) from pg_stat_activity where usename = %s",
                          (name,))
            admin.execute(f"drop role {name}")


def device_url(pgbouncer, db_url, user: str, password: str) -> str:
    return pgbouncer.handle.url(db_name(db_url), user=user) + f"?password={password}&sslmode=disable"


def test_a_device_logs_in_with_its_own_password_and_a_wrong_one_is_refused(
        pgbouncer, pooled, db_url, device_role):
    name, password = device_role
    with database.connect(device_url(pgbouncer, db_url, name, password)) as conn:
        assert conn.execute("select current_user, current_database()").fetchone() == (
            name, db_name(db_url))
        # the look-up is the pooler role's alone: a device cannot read verifiers with it
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select * from flowmesh_pooler.lookup('postgres')")
    with pytest.raises(DatabaseUnreachable, match="authentication failed"):
        database.connect(device_url(pgbouncer, db_url, name, password + "x")).close()


def test_superusers_cannot_log_in_over_tcp(pgbouncer, pooled, db_url):
    """The operator is trusted on the unix socket only; over TCP no password lets a superuser in."""
    with database.connect(pooled) as conn:
        assert conn.execute("select current_user").fetchone() == ("postgres",)
    with pytest.raises(DatabaseUnreachable, match="authentication failed"):
        database.connect(device_url(pgbouncer, db_url, "postgres", "a-guess")).close()


def test_an_expired_role_is_refused(pgbouncer, pooled, db_url, device_role):
    name, password = device_role
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute(f"alter role {name} valid until '2000-01-01'")
    with pytest.raises(DatabaseUnreachable, match="no such user"):  # the look-up skips it
        database.connect(device_url(pgbouncer, db_url, name, password)).close()


def test_statements_survive_moving_between_server_connections(pooled):
    """FlowMesh's connections prepare no statement on the server (PgBouncer 1.18 cannot
    follow them): a client repeating a query keeps working after another client took
    the server connection it last used."""
    with database.connect(pooled) as repeating, database.connect(pooled, autocommit=False) as holder:
        for _ in range(8):  # past psycopg's default prepare threshold (5)
            assert repeating.execute("select 1 + %s", (1,)).fetchone() == (2,)
        holder.execute("select pg_backend_pid()")  # holds the only idle server connection
        for _ in range(3):  # so these run on another one
            assert repeating.execute("select 1 + %s", (1,)).fetchone() == (2,)
        holder.rollback()


def test_many_clients_share_a_few_server_connections(pooled, db_url):
    clients = [database.connect(pooled) for _ in range(200)]
    try:
        for c in clients:
            assert c.execute("select 1").fetchone() == (1,)
        with psycopg.connect(db_url, autocommit=True) as direct:
            (backends,) = direct.execute(
                "select count(*) from pg_stat_activity where datname = current_database() "
                "and usename = 'postgres' and pid <> pg_backend_pid()").fetchone()
        assert 1 <= backends <= pooler.DEFAULT_POOL_SIZE
    finally:
        for c in clients:
            c.close()


def test_more_device_roles_than_server_connections_take_turns(pgbouncer, pooled, db_url):
    """PgBouncer pools per (database, role): with more device roles than
    max_db_connections, each still gets through, PgBouncer closing another pool's
    idle server connection to open its own, and the server never sees more."""
    prefix = f"turn_{uuid.uuid4().hex[:6]}"
    names = [f"{prefix}_{i}" for i in range(pooler.MAX_DB_CONNECTIONS + 5)]
    with psycopg.connect(db_url, autocommit=True) as admin:
        for name in names:
            admin.execute(f"create role {name} login password 'turn-password'")
    try:
        for name in names:
            with database.connect(device_url(pgbouncer, db_url, name, "turn-password")) as conn:
                assert conn.execute("select current_user").fetchone() == (name,)
        with psycopg.connect(db_url, autocommit=True) as admin:
            (backends,) = admin.execute("select count(*) from pg_stat_activity where usename like %s",
                                        (f"{prefix}_%",)).fetchone()
        assert 1 <= backends <= pooler.MAX_DB_CONNECTIONS
    finally:
        with psycopg.connect(db_url, autocommit=True) as admin:
            admin.execute("select pg_terminate_backend(pid) from pg_stat_activity where usename like %s",
                          (f"{prefix}_%",))
            for name in names:
                admin.execute(f"drop role {name}")


def test_the_pooler_role_verifier_is_computed_right_and_stored_as_given(pgbouncer, pooled, db_url):
    """FlowMesh hashes the pooler role's password itself: the server stores that very
    verifier (a malformed one would be taken as a password in clear and hashed again),
    and a SCRAM login with the password passes against it."""
    handle = pgbouncer.handle
    entries = dict(line.split(" ", 1) for line in handle.auth_file.read_text().splitlines())
    verifier = entries[f'"{pooler.ROLE}"'].strip('"')
    with psycopg.connect(db_url) as admin:
        (stored,) = admin.execute("select rolpassword from pg_authid where rolname = %s",
                                  (pooler.ROLE,)).fetchone()
    assert stored == verifier and stored.startswith("SCRAM-SHA-256$4096:")
    password = handle.password_file.read_text().strip()
    with database.connect(device_url(pgbouncer, db_url, pooler.ROLE, password)) as conn:
        assert conn.execute("select current_user").fetchone() == (pooler.ROLE,)
    assert stat.S_IMODE(handle.password_file.stat().st_mode) == 0o600
