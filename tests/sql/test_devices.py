"""Least privilege for devices: a device credential connects over TCP with its
own password and writes only to its tetrahedron as its own node; a JWT user
writes only as the nodes they own; privileged roles write anywhere."""

from __future__ import annotations

import base64
import json
import time
import uuid

import psycopg
import pytest

from flowmesh import devices, settings
from flowmesh.errors import FlowMeshError
from flowmesh.queries import query
from tests.conftest import acting_as, db_name, register, session_ended, wait_for

ALICE = uuid.UUID("00000000-0000-0000-0000-00000000a11c")
BOB = uuid.UUID("00000000-0000-0000-0000-000000000b0b")
RPCS = {"record_mesh_heartbeat(uuid,text,jsonb)", "record_mesh_heartbeats(uuid,jsonb)",
        "record_mesh_events(uuid,jsonb)", "register_node(text,text,text)"}


# pure pieces ------------------------------------------------------------------

def test_role_names_are_safe_unique_and_fit_in_63_bytes():
    tid, other = str(uuid.uuid4()), str(uuid.uuid4())
    names = {devices.role_name(t, n) for t in (tid, other)
             for n in ("pi", "PI", "a" * 128, "é" * 64, "cam-1.kitchen", "--", "cam 1", "cam_1")}
    assert len(names) == 16
    for name in names:
        assert len(name.encode()) <= 63, name
        assert name.startswith(devices.ROLE_PREFIX)
        assert set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789_"), name
    assert devices.role_name(tid, "pi") == devices.role_name(tid, "pi")  # derived, not random


def test_device_url_keeps_the_server_and_replaces_the_user():
    password = "p@ss/w:rd?#&="
    url = devices.device_url("postgresql://postgres:secret@db.example.com:6543/flow?sslmode=require",
                             "flowmesh_dev_pi_0123", password)
    assert url == ("postgresql://flowmesh_dev_pi_0123:p%40ss%2Fw%3Ard%3F%23%26%3D@db.example.com:6543/"
                   "flow?sslmode=require")
    params = psycopg.conninfo.conninfo_to_dict(url)
    assert (params["user"], params["password"], params["host"], params["port"], params["dbname"]) == (
        "flowmesh_dev_pi_0123", password, "db.example.com", "6543", "flow")
    socket = devices.device_url("postgresql://postgres:@/flowmesh?host=/tmp/pg", "r", "x")
    assert psycopg.conninfo.conninfo_to_dict(socket) == {
        "user": "r", "password": "x", "dbname": "flowmesh", "host": "/tmp/pg"}
    v6 = devices.device_url("postgresql://u@[::1]:5432/d", "r", "x")
    assert psycopg.conninfo.conninfo_to_dict(v6)["host"] == "::1"


def test_the_scram_verifier_is_the_one_postgres_computes(conn):
    """PostgreSQL hashes a password itself; the same salt gives the same verifier."""
    role = f"flowmesh_scram_probe_{uuid.uuid4().hex[:8]}"
    password = devices.new_password()
    conn.execute("set password_encryption = 'scram-sha-256'")
    conn.execute(f"create role {role} password '{password}'")
    try:
        (stored,) = conn.execute("select rolpassword from pg_authid where rolname = %s",
                                 (role,)).fetchone()
    finally:
        conn.execute(f"drop role {role}")
    iterations, rest = stored.removeprefix("SCRAM-SHA-256$").split(":", 1)
    salt = base64.b64decode(rest.split("$", 1)[0])
    assert devices.scram_verifier(password, salt=salt, iterations=int(iterations)) == stored
    assert devices.scram_verifier(password) != stored  # a fresh salt every time


# fixtures -------------------------------------------------------------------------

@pytest.fixture
def mesh(conn):
    """home: alice-pi (alice's), bob-cam (bob's), gw (nobody's); shop: bob-shop-pi."""
    home = register(conn, "home", "alice-pi", ALICE)
    register(conn, "home", "bob-cam", BOB)
    register(conn, "home", "gw")
    shop = register(conn, "shop", "bob-shop-pi", BOB)
    return home, shop


@pytest.fixture
def device(conn, db_url, mesh, device_auth, device_roles_dropped, proxy):
    """A credential for alice-pi of home, and a function connecting as it over TCP."""
    with conn.transaction():
        credential = devices.add(conn, "home", "alice-pi", None)
    url = devices.device_url(proxy.url(db_name(db_url)), credential.role, credential.password)

    def connect(password: str | None = None) -> psycopg.Connection:
        target = url if password is None else devices.device_url(
            proxy.url(db_name(db_url)), credential.role, password)
        return psycopg.connect(target, autocommit=True, connect_timeout=10)

    return credential, url, connect


def beat(src, seq=1):
    return {"src": src, "seq": seq, "at": time.time(), "payload": {"metrics": {"cpu_percent": 5}}}


def event(observer, seq=1):
    return {"observer": observer, "seq": seq, "kind": "dead", "subject": "gw", "at": time.time()}


def heartbeats(conn, tid=None):
    return conn.execute("select count(*) from mesh_heartbeats where %s::uuid is null "
                        "or tetrahedron_id = %s::uuid", (tid, tid)).fetchone()[0]


def written(conn):
    """Everything a refused call could have left behind."""
    return conn.execute("""select (select count(*) from mesh_heartbeats), (select count(*) from mesh_events),
                                  (select count(*) from tetrahedrons),
                                  (select count(*) from tetrahedron_vertices)""").fetchone()


# the device credential -----------------------------------------------------------

def test_a_device_connects_over_tcp_with_its_password_only(conn, device):
    credential, url, connect = device
    with connect() as dev:
        assert dev.execute("select current_user").fetchone() == (credential.role,)
        assert dev.info.host == "127.0.0.1"
        # its role's default, which a transaction pooler keeps
        assert dev.execute("show statement_timeout").fetchone() == (f"{settings.CALL_TIMEOUT_S:g}s",)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(password="wrong")
    stored, limit, group = conn.execute(
        "select rolpassword, rolconnlimit, pg_has_role(oid, 'flowmesh_device', 'member') "
        "from pg_authid where rolname = %s", (credential.role,)).fetchone()
    assert stored.startswith("SCRAM-SHA-256$4096:") and credential.password not in stored
    assert (limit, group) == (devices.CONNECTION_LIMIT, True)
    assert credential.password not in url.split("@")[1]


def test_a_device_writes_as_itself_through_every_write_rpc(conn, mesh, device):
    home, _ = mesh
    credential, _, connect = device
    with connect() as dev:
        assert dev.execute(query("register_node"), {"tetrahedron": "home", "node_id": "alice-pi",
                                                    "role": "sensor"}).fetchone() == (home,)
        dev.execute("select record_mesh_heartbeat(%s, 'alice-pi', '{}')", (home,))
        assert dev.execute(query("record_heartbeats"), {
            "tetrahedron_id": home, "batch": json.dumps([beat("alice-pi", 1), beat("alice-pi", 2)])
        }).fetchone() == (2, 2, 0)
        assert dev.execute(query("record_events"), {
            "tetrahedron_id": home, "batch": json.dumps([event("alice-pi")])}).fetchone() == (1, 1, 0)
        # what the agent reads at start-up
        dev.execute(query("server_clock")).fetchone()
        assert dev.execute("select flowmesh.limit_of('batch_max_items')").fetchone() == (10000,)
        assert dev.execute(query("migration_revision")).fetchone() is not None
    assert heartbeats(conn, home) == 3
    (used,) = conn.execute("select last_used_at from flowmesh.device_credentials where role_name = %s",
                           (credential.role,)).fetchone()
    assert used is not None
    assert conn.execute("select role from nodes where node_id = 'alice-pi'").fetchone() == ("sensor",)


@pytest.mark.parametrize("name, sql, args", [
    ("another node", "select record_mesh_heartbeat(%(home)s, 'bob-cam', '{}')", {}),
    ("an unowned node", "select record_mesh_heartbeat(%(home)s, 'gw', '{}')", {}),
    ("a new node", "select record_mesh_heartbeat(%(home)s, 'intruder', '{}')", {}),
    ("another tetrahedron", "select record_mesh_heartbeat(%(shop)s, 'alice-pi', '{}')", {}),
    ("a batch with one other element", "select * from record_mesh_heartbeats(%(home)s, %(batch)s)",
     {"batch": json.dumps([beat("alice-pi", 1), beat("alice-pi", 2), beat("bob-cam", 3)])}),
    ("a batch to another tetrahedron", "select * from record_mesh_heartbeats(%(shop)s, %(batch)s)",
     {"batch": json.dumps([beat("alice-pi")])}),
    ("events of another observer", "select * from record_mesh_events(%(home)s, %(batch)s)",
     {"batch": json.dumps([event("alice-pi", 1), event("bob-cam", 2)])}),
    ("registering another node", "select register_node('home', 'bob-cam')", {}),
    ("registering a new node", "select register_node('home', 'intruder')", {}),
    ("registering elsewhere", "select register_node('shop', 'alice-pi')", {}),
    ("creating a tetrahedron", "select register_node('new-site', 'alice-pi')", {}),
])
def test_a_device_is_refused_anything_else_and_writes_nothing(conn, mesh, device, name, sql, args):
    home, shop = mesh
    _, _, connect = device
    before = written(conn)
    with connect() as dev, pytest.raises(psycopg.errors.InsufficientPrivilege,
                                         match="permission denied"):
        dev.execute(sql, {"home": home, "shop": shop, **args})
    assert written(conn) == before, name


def test_a_device_cannot_borrow_a_users_claims_or_another_role(conn, mesh, device):
    """alice owns bob-cam's neighbour alice-pi only; bob owns bob-cam. A device
    setting bob's claims (as PostgREST would) is still only alice-pi."""
    home, _ = mesh
    _, _, connect = device
    before = written(conn)
    with connect() as dev:
        dev.execute("select set_config('request.jwt.claims', %s, false)",
                    (json.dumps({"role": "authenticated", "sub": str(BOB)}),))
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="may not write as bob-cam"):
            dev.execute("select record_mesh_heartbeat(%s, 'bob-cam', '{}')", (home,))
        # registering itself under forged claims gives the vertex no owner
        dev.execute("select register_node('home', 'alice-pi')")
        for role in ("postgres", "service_role", "authenticated"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                dev.execute(f"set role {role}")
        # the group itself is no credential
        dev.execute("set role flowmesh_device")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="without a device credential"):
            dev.execute("select record_mesh_heartbeat(%s, 'alice-pi', '{}')", (home,))
    assert written(conn) == before
    assert conn.execute("select user_id from tetrahedron_vertices where node_id = 'alice-pi'"
                        ).fetchone() == (ALICE,)


def test_a_device_reads_no_table_and_calls_only_the_write_rpcs(conn, device):
    credential, _, connect = device
    tables = conn.execute("""
        select c.oid::regclass::text from pg_class c
         where c.relnamespace in ('public'::regnamespace, 'flowmesh'::regnamespace,
                                  'flowmesh_partitions'::regnamespace, 'auth'::regnamespace)
           and c.relkind in ('r', 'p', 'v', 'm')
           and has_table_privilege(%(role)s, c.oid, 'select, insert, update, delete, truncate')
    """, {"role": credential.role}).fetchall()
    assert tables == [("flowmesh.alembic_version",)]  # the migration revision, for the agent's check
    definers = {r[0] for r in conn.execute("""
        select p.oid::regprocedure::text from pg_proc p
         where p.prosecdef and p.pronamespace in ('public'::regnamespace, 'flowmesh'::regnamespace)
           and has_function_privilege(%s, p.oid, 'execute')""", (credential.role,))}
    assert definers == RPCS
    with connect() as dev:
        for table in ("mesh_heartbeats", "tetrahedrons", "nodes", "flowmesh.device_credentials",
                      "guardian_alerts"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                dev.execute(f"select * from {table} limit 1")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            dev.execute("select check_mesh_heartbeats_and_alert(0)")


def test_the_clear_password_never_reaches_the_server_log(conn, pg_server, mesh, device_roles_dropped):
    """Every statement logged: the log holds the verifier, never the password."""
    log = pg_server.log
    start = log.stat().st_size
    conn.execute("set log_statement = 'all'")
    try:
        with conn.transaction():
            credential = devices.add(conn, "home", "bob-cam", None)
    finally:
        conn.execute("reset log_statement")

    def logged() -> str | None:
        with log.open("rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
        return text if credential.role in text else None

    text = wait_for(logged, timeout=10)
    assert "SCRAM-SHA-256$4096:" in text  # the statement was logged, with the verifier
    assert credential.password not in text


def test_a_vertex_with_a_credential_is_not_deleted_until_it_is_revoked(conn, mesh, device):
    """No login role is left behind without the row that says what it may do."""
    home, _ = mesh
    with pytest.raises(psycopg.errors.RestrictViolation, match="device_credentials"):
        conn.execute("delete from tetrahedrons where id = %s", (home,))
    devices.revoke(conn, "home", "alice-pi")
    conn.execute("delete from tetrahedrons where id = %s", (home,))


def test_a_credential_is_one_per_device(conn, mesh, device):
    with pytest.raises(FlowMeshError, match="already has a device credential"), conn.transaction():
        devices.add(conn, "home", "alice-pi", None)


def test_revoke_ends_a_live_session_and_the_next_connect_fails(conn, device):
    credential, _, connect = device
    dev = connect()
    try:
        # a temporary table is an object the role owns, for as long as the session
        # lasts: the revoke must still get the role dropped
        dev.execute("create temp table held (x int)")
        role, ended = devices.revoke(conn, "home", "alice-pi")
        assert (role, ended) == (credential.role, 1)
        wait_for(lambda: session_ended(dev), timeout=10)
    finally:
        dev.close()
    with pytest.raises(psycopg.OperationalError, match="password authentication failed|does not exist"):
        connect()
    assert conn.execute("select count(*) from pg_roles where rolname = %s",
                        (credential.role,)).fetchone() == (0,)
    assert conn.execute("select count(*) from flowmesh.device_credentials").fetchone() == (0,)
    with pytest.raises(FlowMeshError, match="no device credential for node 'alice-pi'"):
        devices.revoke(conn, "home", "alice-pi")


# JWT vertices and privileged roles ------------------------------------------------

def test_a_user_writes_only_as_the_nodes_they_own(conn, mesh):
    home, shop = mesh
    with acting_as(conn, "authenticated", ALICE):
        conn.execute("select record_mesh_heartbeat(%s, 'alice-pi', '{}')", (home,))
        conn.execute("select record_mesh_heartbeats(%s, %s)", (home, json.dumps([beat("alice-pi")])))
        conn.execute("select record_mesh_events(%s, %s)", (home, json.dumps([event("alice-pi")])))
        conn.execute("insert into mesh_heartbeats (tetrahedron_id, source, payload) "
                     "values (%s, 'alice-pi', '{}')", (home,))
        conn.execute("select register_node('home', 'alice-new')")  # a new node becomes hers
        before = written(conn)
        for sql, args in (
            ("select record_mesh_heartbeat(%s, 'bob-cam', '{}')", (home,)),
            ("select record_mesh_heartbeat(%s, 'gw', '{}')", (home,)),
            ("select record_mesh_heartbeats(%s, %s)",
             (home, json.dumps([beat("alice-pi", 7), beat("bob-cam", 8)]))),
            ("select record_mesh_events(%s, %s)", (home, json.dumps([event("gw")]))),
            ("select register_node('home', 'bob-cam')", ()),
            ("select register_node('shop', 'alice-pi')", ()),
            ("select record_mesh_heartbeat(%s, 'bob-shop-pi', '{}')", (shop,)),
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
                conn.execute(sql, args)
            assert written(conn) == before, sql
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            conn.execute("insert into mesh_heartbeats (tetrahedron_id, source, payload) "
                         "values (%s, 'bob-cam', '{}')", (home,))
    assert conn.execute("select user_id from tetrahedron_vertices where node_id = 'alice-new'"
                        ).fetchone() == (ALICE,)
    assert conn.execute("select count(*) from mesh_heartbeats where source = 'alice-pi'"
                        ).fetchone() == (3,)


def test_privileged_roles_write_as_any_node(conn, mesh):
    home, shop = mesh
    with acting_as(conn, "service_role"):
        conn.execute("select record_mesh_heartbeats(%s, %s)",
                     (home, json.dumps([beat("alice-pi", 1), beat("bob-cam", 2), beat("new", 3)])))
        conn.execute("select record_mesh_events(%s, %s)", (shop, json.dumps([event("anyone")])))
    conn.execute("select record_mesh_heartbeat(%s, 'gw', '{}')", (home,))  # postgres
    assert heartbeats(conn, home) == 4


def test_an_operator_with_createrole_but_no_superuser(conn, db_url, mesh, device_auth,
                                                      device_roles_dropped, proxy):
    """As on Supabase, whose postgres is no superuser: CREATEROLE, the group's
    ADMIN option and service_role's rights (with BYPASSRLS) suffice to add and
    revoke; ending sessions takes pg_signal_backend, and without it revoke says so."""
    op, password = f"flowmesh_operator_{uuid.uuid4().hex[:8]}", devices.new_password()
    conn.execute(f"create role {op} login createrole bypassrls "
                 f"password '{devices.scram_verifier(password)}'")
    conn.execute(f"grant service_role to {op}")  # the tables' grants (BYPASSRLS is not inherited)
    # administers the group without its rights (as its creator does by default);
    # a member of it all the same, so pg_hba.conf asks it for a password too
    conn.execute(f"grant flowmesh_device to {op} with admin option, inherit false, set false")
    op_url = devices.device_url(proxy.url(db_name(db_url)), op, password)
    try:
        with psycopg.connect(op_url, autocommit=True) as oc:
            assert oc.execute("select rolsuper from pg_roles where rolname = current_user"
                              ).fetchone() == (False,)
            with oc.transaction():
                credential = devices.add(oc, "home", "alice-pi", None)
            url = devices.device_url(proxy.url(db_name(db_url)), credential.role, credential.password)
            with psycopg.connect(url, autocommit=True) as dev:
                dev.execute("select record_mesh_heartbeat(%s, 'alice-pi', '{}')", (mesh[0],))
                with pytest.raises(FlowMeshError, match="could not end its open sessions"):
                    devices.revoke(oc, "home", "alice-pi")
            assert conn.execute("select count(*) from pg_roles where rolname = %s",
                                (credential.role,)).fetchone() == (0,)
            conn.execute(f"grant pg_signal_backend to {op}")
            with oc.transaction():
                credential = devices.add(oc, "home", "alice-pi", None)
            url = devices.device_url(proxy.url(db_name(db_url)), credential.role, credential.password)
            with psycopg.connect(url, autocommit=True):
                assert devices.revoke(oc, "home", "alice-pi") == (credential.role, 1)
    finally:
        conn.execute(f"drop owned by {op}")
        conn.execute(f"drop role {op}")
