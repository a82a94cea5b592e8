"""The schema can be distributed by tetrahedron (Citus, tetrahedron_id as the
distribution column), read from the catalog of a migrated database.

What Citus needs, and this test checks:

* every table has a ``tetrahedron_id`` column (``tetrahedrons`` is distributed
  by its ``id``, which is the tetrahedron id), or is listed in NOT_DISTRIBUTED
  with the reason it stays whole;
* every primary key and unique index of a distributed table includes the
  distribution column (a shard can only enforce uniqueness within itself);
* every foreign key between distributed tables joins on the distribution
  column, and no table kept whole references a distributed one;
* every public function that writes a distributed table (itself or through
  the private functions it calls) takes the tetrahedron as an argument, so
  Citus can route the call to one shard, unless it is a fleet-wide pass
  listed in FLEET_PASSES.

The one rule no shard can enforce, that a tetrahedron's name is unique across
the fleet, is listed in FLEET_UNIQUE with the reason it is kept.
"""

from __future__ import annotations

import re
from collections import defaultdict

import psycopg
import pytest

DISTRIBUTION_COLUMN = "tetrahedron_id"
#: Distributed by its own id: the tetrahedron id itself.
ROOT_TABLE = ("public", "tetrahedrons", "id")

#: Tables kept whole: "reference" (copied to every node, joined locally by
#: every shard) or "local" (kept on the coordinator). One place, one reason each.
NOT_DISTRIBUTED = {
    "public.health_rules": (
        "reference", "the scoring rules: a few rows, read by every heartbeat's trigger on every shard"),
    "public.check_runs": (
        "local", "one row per run of the staleness check, which is fleet-wide (tetrahedron_id is "
                 "null then) and runs on the coordinator; a log, so it holds no foreign key"),
}

#: Unique indexes of distributed tables that omit the distribution column:
#: enforced on the coordinator (a Citus reference table of names, or the
#: coordinator's local copy) rather than by a shard.
FLEET_UNIQUE = {
    "public.tetrahedrons_name_idx": (
        "a tetrahedron's name is unique across the fleet (agents register by name); "
        "register_node resolves the name on the coordinator before it routes by id"),
}

#: Public functions that write distributed tables without taking a
#: tetrahedron: scheduled passes over the whole fleet, which Citus runs as
#: multi-shard statements (in parallel, one task per shard).
FLEET_PASSES = {
    "check_mesh_heartbeats_and_alert(threshold_minutes integer)":
        "the scheduled staleness check of every tetrahedron",
    "close_expired_decisions()": "expires every open decision past closes_at",
    "record_offline_transitions()": "logs every node that went offline since the last pass",
    "run_prediction_pass(window_size integer)": "scores every node's failure risk",
    "run_scheduled_checks(threshold_minutes integer, window_size integer)":
        "the scheduler's one entry point: the three passes above",
}

#: Arguments that name the tetrahedron a call is for (by id, or by the
#: fleet-unique name register_node resolves).
TETRAHEDRON_ARGUMENTS = {("t_uuid", "uuid"), ("tetrahedron_id", "uuid"), ("tetrahedron_name", "text")}

SCHEMAS = ("public", "flowmesh")

TABLES = """
select n.nspname || '.' || c.relname,
       array_agg(a.attname::text order by a.attnum) filter (where a.attnum > 0 and not a.attisdropped)
  from pg_class c
  join pg_namespace n on n.oid = c.relnamespace
  join pg_attribute a on a.attrelid = c.oid
 where n.nspname = any(%s) and c.relkind in ('r', 'p') and not c.relispartition
   and c.relname <> 'alembic_version'
 group by 1 order by 1
"""

UNIQUE_INDEXES = """
select n.nspname || '.' || t.relname, n.nspname || '.' || i.relname,
       array(select a.attname::text from unnest(x.indkey) k join pg_attribute a
              on a.attrelid = t.oid and a.attnum = k)
  from pg_index x
  join pg_class i on i.oid = x.indexrelid
  join pg_class t on t.oid = x.indrelid
  join pg_namespace n on n.oid = t.relnamespace
 where n.nspname = any(%s) and x.indisunique and not t.relispartition
   and t.relname <> 'alembic_version'
"""

FOREIGN_KEYS = """
select n.nspname || '.' || t.relname, f.conname, rn.nspname || '.' || r.relname,
       array(select a.attname::text from unnest(f.conkey) with ordinality k(n, o)
              join pg_attribute a on a.attrelid = f.conrelid and a.attnum = k.n order by k.o),
       array(select a.attname::text from unnest(f.confkey) with ordinality k(n, o)
              join pg_attribute a on a.attrelid = f.confrelid and a.attnum = k.n order by k.o)
  from pg_constraint f
  join pg_class t on t.oid = f.conrelid
  join pg_namespace n on n.oid = t.relnamespace
  join pg_class r on r.oid = f.confrelid
  join pg_namespace rn on rn.oid = r.relnamespace
 where f.contype = 'f' and n.nspname = any(%s) and not t.relispartition
"""

FUNCTIONS = """
select n.nspname, p.proname, p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',
       coalesce(p.proargnames, '{}'), array(select format_type(t, null) from unnest(p.proargtypes) t),
       p.prosrc, p.prorettype = 'trigger'::regtype
  from pg_proc p join pg_namespace n on n.oid = p.pronamespace
 where n.nspname = any(%s) and p.prokind = 'f'
"""

WRITE = re.compile(r"\b(?:insert\s+into|update|delete\s+from)\s+(?:only\s+)?((?:public|flowmesh)\.\w+)",
                   re.IGNORECASE)
CALL = re.compile(r"\b((?:public|flowmesh)\.\w+)\s*\(")


def distributed_tables(conn: psycopg.Connection) -> tuple[set[str], list[str]]:
    """The tables to distribute, and the problems: tables with no distribution column."""
    distributed, problems = set(), []
    for table, columns in conn.execute(TABLES, (list(SCHEMAS),)).fetchall():
        if table in NOT_DISTRIBUTED:
            continue
        if DISTRIBUTION_COLUMN in columns or table == f"{ROOT_TABLE[0]}.{ROOT_TABLE[1]}":
            distributed.add(table)
        else:
            problems.append(f"{table} has no {DISTRIBUTION_COLUMN} and is not listed as kept whole")
    return distributed, problems


def distribution_column(table: str) -> str:
    return ROOT_TABLE[2] if table == f"{ROOT_TABLE[0]}.{ROOT_TABLE[1]}" else DISTRIBUTION_COLUMN


def unique_key_problems(conn: psycopg.Connection, distributed: set[str]) -> list[str]:
    problems = []
    for table, index, columns in conn.execute(UNIQUE_INDEXES, (list(SCHEMAS),)).fetchall():
        if table in distributed and distribution_column(table) not in columns \
                and index not in FLEET_UNIQUE:
            problems.append(f"{index} on {table} {columns} does not include "
                            f"{distribution_column(table)}")
    return problems


def foreign_key_problems(conn: psycopg.Connection, distributed: set[str]) -> list[str]:
    problems = []
    for table, name, target, columns, target_columns in conn.execute(
            FOREIGN_KEYS, (list(SCHEMAS),)).fetchall():
        if target not in distributed:
            continue  # to a reference table: allowed from anywhere
        if table not in distributed:
            problems.append(f"{name}: {table} is kept whole but references distributed {target}")
        elif (distribution_column(table), distribution_column(target)) not in zip(
                columns, target_columns, strict=True):
            problems.append(f"{name}: {table} {columns} -> {target} {target_columns} does not "
                            "join on the distribution column")
    return problems


def rpc_problems(conn: psycopg.Connection, distributed: set[str]) -> list[str]:
    """Public functions writing distributed tables (directly or through the
    functions they call, triggers aside) that do not take the tetrahedron."""
    functions = conn.execute(FUNCTIONS, (list(SCHEMAS),)).fetchall()
    writes: dict[str, set[str]] = defaultdict(set)
    calls: dict[str, set[str]] = defaultdict(set)
    for schema, name, _, _, _, source, is_trigger in functions:
        if is_trigger:
            continue  # fired by the write it follows, on that row's shard
        qualified = f"{schema}.{name}"
        writes[qualified] |= {t for t in WRITE.findall(source) if t in distributed}
        calls[qualified] |= set(CALL.findall(source)) - {qualified}
    changed = True
    while changed:  # the writes of everything a function calls, to a fixed point
        changed = False
        for fn, callees in calls.items():
            for callee in callees:
                if not writes.get(callee, set()) <= writes[fn]:
                    writes[fn] |= writes[callee]
                    changed = True
    problems = []
    for schema, name, signature, arg_names, arg_types, _, is_trigger in functions:
        if schema != "public" or is_trigger or not writes[f"{schema}.{name}"]:
            continue
        if set(zip(arg_names, arg_types, strict=False)) & TETRAHEDRON_ARGUMENTS:
            continue
        if signature not in FLEET_PASSES:
            problems.append(f"{signature} writes {sorted(writes[f'{schema}.{name}'])} but takes no "
                            "tetrahedron argument")
    return problems


def all_problems(conn: psycopg.Connection) -> list[str]:
    distributed, problems = distributed_tables(conn)
    return (problems + unique_key_problems(conn, distributed)
            + foreign_key_problems(conn, distributed) + rpc_problems(conn, distributed))


def test_schema_is_distributable_by_tetrahedron(conn):
    assert all_problems(conn) == []


def test_every_exception_is_still_there(conn):
    """A listed exception whose object is gone (or renamed) must be removed from its list."""
    tables = {t for t, _ in conn.execute(TABLES, (list(SCHEMAS),)).fetchall()}
    assert set(NOT_DISTRIBUTED) <= tables
    indexes = {i for _, i, _ in conn.execute(UNIQUE_INDEXES, (list(SCHEMAS),)).fetchall()}
    assert set(FLEET_UNIQUE) <= indexes
    signatures = {s for n, _, s, *_ in conn.execute(FUNCTIONS, (list(SCHEMAS),)).fetchall()
                  if n == "public"}
    assert set(FLEET_PASSES) <= signatures


def test_the_writing_rpcs_are_found(conn):
    """The analysis sees the RPCs it exists for (else it could pass by seeing nothing)."""
    distributed, _ = distributed_tables(conn)
    assert {"public.mesh_heartbeats", "public.tetrahedrons", "flowmesh.node_records",
            "public.guardian_votes"} <= distributed
    before = set(rpc_problems(conn, distributed))
    conn.execute("""
        create function public.forget_node(node text) returns void language sql as
        $$ delete from flowmesh.node_records where node_id = node $$""")
    conn.execute("""
        create function public.forget_node_of(t_uuid uuid, node text) returns void language sql as
        $$ select public.forget_node(node) $$""")
    conn.execute("""
        create function public.forget_everything() returns void language sql as
        $$ select public.forget_node(null) $$""")
    assert sorted(set(rpc_problems(conn, distributed)) - before) == [
        "forget_everything() writes ['flowmesh.node_records'] but takes no tetrahedron argument",
        "forget_node(node text) writes ['flowmesh.node_records'] but takes no tetrahedron argument",
    ]


@pytest.mark.parametrize("ddl, problem", [
    ("create table public.fleet_notes (id bigint primary key, body text)",
     "public.fleet_notes has no tetrahedron_id and is not listed as kept whole"),
    ("create table public.site_notes (id bigint primary key, "
     "tetrahedron_id uuid not null references public.tetrahedrons (id))",
     "public.site_notes_pkey on public.site_notes ['id'] does not include tetrahedron_id"),
    ("create table public.site_links (tetrahedron_id uuid not null, "
     "peer uuid references public.tetrahedrons (id), primary key (tetrahedron_id, peer))",
     "site_links_peer_fkey: public.site_links ['peer'] -> public.tetrahedrons ['id'] does not "
     "join on the distribution column"),
])
def test_each_rule_catches_its_breach(conn, ddl, problem):
    before = set(all_problems(conn))
    conn.execute(ddl)
    assert set(all_problems(conn)) - before == {problem}
