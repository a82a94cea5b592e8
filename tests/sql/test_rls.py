"""Row-level security and RPC authorization, tested by switching roles and
setting JWT claims the way PostgREST does."""

from __future__ import annotations

import json
import time
import uuid

import psycopg
import pytest

from flowmesh.limits import EMBEDDING_DIMENSIONS
from tests.conftest import acting_as, register

ALICE = uuid.UUID("00000000-0000-4000-8000-00000000a11c")
BOB = uuid.UUID("00000000-0000-4000-8000-000000000b0b")
TABLES = ["tetrahedrons", "tetrahedron_vertices", "nodes", "mesh_heartbeats", "guardian_alerts"]


@pytest.fixture
def two_meshes(conn):
    home = register(conn, "alice-home", "alice-pi", ALICE)
    shop = register(conn, "bob-shop", "bob-cam", BOB)
    for tid, src in ((home, "alice-pi"), (shop, "bob-cam")):
        conn.execute("select record_mesh_heartbeat(%s, %s, '{}')", (tid, src))
    conn.execute("select check_mesh_heartbeats_and_alert(0)")
    return home, shop


def test_vertex_reads_only_its_own_tetrahedron(conn, two_meshes):
    home, _ = two_meshes
    with acting_as(conn, "authenticated", ALICE):
        for table in TABLES:
            column = "id" if table == "tetrahedrons" else "tetrahedron_id"
            ids = {r[0] for r in conn.execute(f"select {column} from {table}").fetchall()}
            assert ids == {home}, table


def test_vertex_inserts_heartbeats_into_its_own_tetrahedron_only(conn, two_meshes):
    home, shop = two_meshes
    with acting_as(conn, "authenticated", ALICE):
        conn.execute(
            "insert into mesh_heartbeats (tetrahedron_id, source, payload) values (%s, 'alice-pi', '{}')",
            (home,),
        )
        conn.execute("select record_mesh_heartbeat(%s, 'alice-pi', '{}')", (home,))
        conn.execute(
            "select record_mesh_heartbeats(%s, %s)",
            (home, json.dumps([{"src": "alice-pi", "seq": 1, "at": time.time(), "payload": {}}])),
        )
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            conn.execute(
                "insert into mesh_heartbeats (tetrahedron_id, source) values (%s, 'x')", (shop,)
            )
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            conn.execute(  # a heartbeat from the future would hide staleness
                "insert into mesh_heartbeats (tetrahedron_id, source, created_at) "
                "values (%s, 'alice-pi', now() + interval '1 day')", (home,))
        for sql, args in (
            ("select record_mesh_heartbeat(%s, 'x', '{}')", (shop,)),
            ("select record_mesh_heartbeats(%s, '[]')", (shop,)),
            # an unknown id looks the same as a foreign one: nothing leaks
            ("select record_mesh_heartbeat(%s, 'x', '{}')", (uuid.uuid4(),)),
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="not a vertex"):
                conn.execute(sql, args)
        # vertices can read but not change alerts, nodes or membership
        for sql in (
            "update guardian_alerts set resolved_at = now()",
            "delete from mesh_heartbeats",
            "insert into tetrahedron_vertices (tetrahedron_id, node_id, user_id) "
            f"values ('{shop}', 'mole', '{ALICE}')",
            "update nodes set role = 'mole'",
            "update flowmesh.node_records set health_status = 'degraded'",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql)
    (n,) = conn.execute("select count(*) from mesh_heartbeats where tetrahedron_id = %s",
                        (shop,)).fetchone()
    assert n == 1


def test_authenticated_stranger_sees_nothing(conn, two_meshes):
    with acting_as(conn, "authenticated", uuid.uuid4()):
        for table in TABLES:
            assert conn.execute(f"select count(*) from {table}").fetchone() == (0,), table


@pytest.fixture
def every_table_filled(conn, two_meshes):
    """A row in every table and view: alerts, votes, check runs, mesh events, a
    silent tetrahedron, an offline node and a device credential."""
    home, shop = two_meshes
    register(conn, "bob-shed", "bob-gate", BOB)  # never heard from: silent
    register(conn, "bob-shop", "bob-phone", BOB)
    old = [{"src": "bob-phone", "seq": 1, "at": time.time() - 600, "payload": {}}]
    conn.execute("select record_mesh_heartbeats(%s, %s)", (shop, json.dumps(old)))  # offline now
    conn.execute("select record_mesh_events(%s, %s)", (shop, json.dumps(
        [{"observer": "bob-cam", "seq": 1, "kind": "joined", "subject": "bob-phone", "at": time.time()}])))
    conn.execute("select check_mesh_heartbeats_and_alert(0, %s)", (shop,))
    (decision,) = conn.execute(
        "select id from propose_guardian_decision(%s, 'quarantine', 'bob-phone', 'bob-cam')", (shop,)
    ).fetchone()
    conn.execute("select cast_guardian_vote(%s, %s, 'bob-cam', true)", (shop, decision))
    face = {"hash": "bob-face", "data_type": "person", "node": "bob-phone",
            "embedding": [1] * EMBEDDING_DIMENSIONS}
    conn.execute("select register_hashes(%s, %s)", (shop, json.dumps([face])))
    # a credential's mapping row (no role behind it: only its visibility is tested here)
    conn.execute("insert into flowmesh.device_credentials (role_name, tetrahedron_id, node_id) "
                 "values ('flowmesh_device_rls_row', %s, 'bob-phone')", (shop,))
    return home, shop


def readable_relations(conn) -> list[str]:
    """Every table and view an authenticated user may select from: the API's
    and the private schema's, found in the catalog so new ones are covered."""
    return [r[0] for r in conn.execute("""
        select c.oid::regclass::text from pg_class c
         where c.relnamespace in ('public'::regnamespace, 'flowmesh'::regnamespace)
           and c.relkind in ('r', 'p', 'v')
           and has_table_privilege('authenticated', c.oid, 'select')
         order by 1""")]


def test_a_stranger_sees_no_row_of_any_table_or_view(conn, every_table_filled):
    relations = readable_relations(conn)
    assert {"nodes", "mesh_summary", "node_status_timeline", "health_rules", "check_runs",
            "flowmesh.node_records", "flowmesh.unlogged_offline_periods"} <= set(relations)
    with acting_as(conn, "service_role"):
        empty = [r for r in relations if conn.execute(f"select count(*) from {r}").fetchone() == (0,)]
    assert empty == [], "fill these in every_table_filled, or the check below proves nothing"
    with acting_as(conn, "authenticated", uuid.uuid4()):  # a vertex of nothing
        seen = {r: conn.execute(f"select count(*) from {r}").fetchone()[0] for r in relations}
    assert seen == dict.fromkeys(relations, 0)


def test_a_vertex_sees_only_rows_of_its_own_tetrahedron(conn, every_table_filled):
    home, _ = every_table_filled
    relations = readable_relations(conn)
    with acting_as(conn, "authenticated", ALICE):
        for relation in relations:
            columns = [c.name for c in conn.execute(f"select * from {relation} limit 0").description]
            column = "tetrahedron_id" if "tetrahedron_id" in columns else "id" \
                if relation == "tetrahedrons" else None
            if column:
                ids = {r[0] for r in conn.execute(f"select {column} from {relation}")}
                assert ids <= {home}, relation
        # the rules are the same for every tetrahedron: any vertex reads them
        assert conn.execute("select count(*) from health_rules").fetchone()[0] >= 5


def test_anon_is_refused_everything(conn, two_meshes):
    home, _ = two_meshes
    with acting_as(conn, "anon"):
        for table in TABLES:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"select * from {table}")
        for sql in (
            f"select record_mesh_heartbeat('{home}', 'x', '{{}}')",
            f"select record_mesh_heartbeats('{home}', '[]')",
            "select check_mesh_heartbeats_and_alert(60)",
            "select register_node('x', 'y')",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql)


def test_service_role_does_everything(conn, two_meshes):
    home, shop = two_meshes
    with acting_as(conn, "service_role"):
        for table in TABLES:
            assert conn.execute(f"select count(*) from {table}").fetchone()[0] >= 2, table
        conn.execute("select record_mesh_heartbeat(%s, 'svc', '{}')", (shop,))
        conn.execute("select check_mesh_heartbeats_and_alert(60)")
        conn.execute("select register_node('new-site', 'gw')")
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute("select record_mesh_heartbeat(%s, 'svc', '{}')", (uuid.uuid4(),))


def test_checker_is_for_operators_only(conn, two_meshes):
    home, _ = two_meshes
    with acting_as(conn, "authenticated", ALICE):
        for sql in ("select check_mesh_heartbeats_and_alert(60)",
                    f"select check_mesh_heartbeats_and_alert(60, '{home}')"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql)
        # but a vertex may ask which of its tetrahedrons are stale
        rows = conn.execute("select tetrahedron_id from stale_tetrahedrons(0)").fetchall()
        assert rows == [(home,)]


def test_authenticated_register_creates_or_joins_own_only(conn, two_meshes):
    with acting_as(conn, "authenticated", ALICE):
        (tid,) = conn.execute("select register_node('alice-cabin', 'alice-phone')").fetchone()
        (again,) = conn.execute("select register_node('alice-home', 'alice-laptop')").fetchone()
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="not a vertex"):
            conn.execute("select register_node('bob-shop', 'alice-mole')")
    owner = conn.execute(
        "select user_id from tetrahedron_vertices where tetrahedron_id = %s", (tid,)
    ).fetchone()
    assert owner == (ALICE,)
    assert again == two_meshes[0]
    with acting_as(conn, "authenticated"), pytest.raises(  # a token without a user
        psycopg.errors.InsufficientPrivilege, match="authenticated user"
    ):
        conn.execute("select register_node('nobody', 'n')")


def test_service_role_bypasses_rls_as_on_supabase(conn):
    (bypass,) = conn.execute(
        "select rolbypassrls from pg_roles where rolname = 'service_role'"
    ).fetchone()
    assert bypass
