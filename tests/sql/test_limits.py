"""Limits are defined once in SQL (flowmesh.limits()) and equal flowmesh.limits,
which the agent and the mesh use; every RPC and table enforces them."""

from __future__ import annotations

import json
import re
import time

import psycopg
import pytest

from flowmesh import limits, migrations
from tests.conftest import register

ASCII_MAX = "n" * limits.NODE_ID_MAX_BYTES            # 128 bytes: the longest node id
ASCII_OVER = "n" * (limits.NODE_ID_MAX_BYTES + 1)     # 129 bytes
MULTIBYTE_MAX = "é" * (limits.NODE_ID_MAX_BYTES // 2)  # 64 characters, 128 bytes
MULTIBYTE_OVER = "é" * limits.NODE_ID_MAX_BYTES        # 128 characters, 256 bytes


def test_sql_limits_are_the_python_limits(conn):
    assert conn.execute("select flowmesh.limits()").fetchone() == (limits.ALL,)
    for name, value in limits.ALL.items():
        assert conn.execute("select flowmesh.limit_of(%s)", (name,)).fetchone() == (value,)


def test_the_migrations_name_every_limit_and_only_those():
    text = "\n".join(f.read_text() for f in migrations.sql_files())
    assert set(re.findall(r"limit_of\('([a-z_]+)'\)", text)) == set(limits.ALL)
    # no limit restated as a number in a rule (comments may mention them; 300
    # is also the default node_timeout_seconds, which is not a limit)
    code = re.sub(r"--[^\n]*|'(?:[^']|'')*'", "", text)
    for value in (limits.NODE_ID_MAX_BYTES, limits.BATCH_MAX_ITEMS, limits.PAYLOAD_MAX_BYTES):
        assert not re.search(rf"\b{value}\b", code), value


def test_the_limit_functions_are_immutable_and_inlinable(conn):
    rows = conn.execute("""
        select p.proname, p.provolatile, p.proconfig, l.lanname from pg_proc p
          join pg_language l on l.oid = p.prolang
         where p.pronamespace = 'flowmesh'::regnamespace
           and p.proname in ('limits', 'limit_of', 'is_node_id', 'node_id_problem', 'is_tetrahedron_name')
    """).fetchall()
    assert len(rows) == 5
    assert all(volatile == "i" and config is None and language == "sql"
               for _, volatile, config, language in rows), rows
    # so a check constraint's limit is a constant once planned
    plan = conn.execute("explain (verbose, costs off) select flowmesh.is_node_id('pi')").fetchone()[0]
    assert "is_node_id" not in plan and "limit_of" not in plan


def test_every_stored_node_id_has_the_node_id_type(conn):
    columns = conn.execute("""
        select a.attrelid::regclass::text || '.' || a.attname, a.atttypid::regtype::text
          from pg_attribute a join pg_class c on c.oid = a.attrelid
         where c.relnamespace in ('public'::regnamespace, 'flowmesh'::regnamespace)
           and c.relkind in ('r', 'p') and a.attnum > 0 and not a.attisdropped
           and a.attname in ('node_id', 'source', 'observer', 'subject', 'voter', 'proposed_by',
                             'mesh_reported_by', 'mesh_transport_reported_by')""").fetchall()
    assert len(columns) >= 10
    assert {name: kind for name, kind in columns if kind != "flowmesh.node_id"} == {}
    assert conn.execute("select atttypid::regtype::text from pg_attribute "
                        "where attrelid = 'tetrahedrons'::regclass and attname = 'name'"
                        ).fetchone() == ("flowmesh.tetrahedron_name",)


def call_rpc(conn, tid, rpc, node_id):
    now = time.time()
    if rpc == "record_mesh_heartbeat":
        conn.execute("select record_mesh_heartbeat(%s, %s, '{}')", (tid, node_id))
    elif rpc == "record_mesh_heartbeats":
        item = {"src": node_id, "seq": 1, "at": now, "payload": {}}
        conn.execute("select record_mesh_heartbeats(%s, %s)", (tid, json.dumps([item])))
    elif rpc == "register_node":
        conn.execute("select register_node('home', %s)", (node_id,))
    else:  # record_mesh_events, as observer and as subject
        what = rpc.split(":")[1]
        item = {"observer": "pi", "subject": "pi", "seq": 1, "kind": "joined", "at": now, what: node_id}
        conn.execute("select record_mesh_events(%s, %s)", (tid, json.dumps([item])))


RPCS = {"record_mesh_heartbeat": "src", "record_mesh_heartbeats": "src", "register_node": "node_id",
        "record_mesh_events:observer": "observer", "record_mesh_events:subject": "subject"}


@pytest.mark.parametrize("rpc", RPCS)
@pytest.mark.parametrize("node_id", [ASCII_MAX, MULTIBYTE_MAX], ids=["128-ascii", "64-two-byte"])
def test_a_node_id_of_128_bytes_is_accepted(conn, rpc, node_id):
    tid = register(conn, "home", "pi")
    call_rpc(conn, tid, rpc, node_id)


@pytest.mark.parametrize("rpc", RPCS)
@pytest.mark.parametrize("node_id", [ASCII_OVER, MULTIBYTE_OVER, "tab\there", ""],
                         ids=["129-ascii", "128-chars-256-bytes", "control", "empty"])
def test_a_longer_node_id_is_refused(conn, rpc, node_id):
    tid = register(conn, "home", "pi")
    with pytest.raises(psycopg.errors.InvalidParameterValue) as info:
        call_rpc(conn, tid, rpc, node_id)
    assert info.value.sqlstate == "22023"
    assert f"{RPCS[rpc]} must be 1 to 128 bytes of printable UTF-8" in str(info.value)


@pytest.mark.parametrize(("table", "column"), [
    ("mesh_heartbeats", "source"), ("tetrahedron_vertices", "node_id"), ("nodes", "node_id"),
])
def test_tables_refuse_a_longer_node_id_however_it_is_written(conn, table, column):
    tid = register(conn, "home", "pi")
    conn.execute(f"insert into {table} (tetrahedron_id, {column}) values (%s, %s)", (tid, MULTIBYTE_MAX))
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(f"insert into {table} (tetrahedron_id, {column}) values (%s, %s)", (tid, MULTIBYTE_OVER))


def test_a_tetrahedron_name_is_limited_in_characters(conn):
    conn.execute("select register_node(%s, 'pi')", ("é" * limits.TETRAHEDRON_NAME_MAX_CHARS,))
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="1 to 128 printable characters"):
        conn.execute("select register_node(%s, 'pi')", ("é" * (limits.TETRAHEDRON_NAME_MAX_CHARS + 1),))
