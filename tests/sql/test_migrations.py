"""Migrations: one source, two delivery paths, idempotent, and linted like
Supabase's database linter would."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections import defaultdict
from pathlib import Path

import psycopg
import pytest
from alembic.script import ScriptDirectory

from flowmesh import embedded, migrations, supabase_sync
from flowmesh.errors import FlowMeshError

ROOT = Path(__file__).resolve().parents[2]


def test_supabase_copies_are_identical():
    assert supabase_sync.differences() == []
    assert len(list(supabase_sync.supabase_dir().glob("*.sql"))) == len(migrations.sql_files())


def test_alembic_chain_matches_sql_files():
    script = ScriptDirectory.from_config(migrations.alembic_config("unused"))
    chain = [rev.revision for rev in reversed(list(script.walk_revisions()))]
    assert chain == [f.name[:4] for f in migrations.sql_files()]
    assert script.get_current_head() == migrations.head_revision()


def test_sql_files_are_named_and_headed():
    for f in migrations.sql_files():
        first = f.read_text().splitlines()[0]
        assert first == f"-- {f.name}", f
        assert f.name == f.name.lower()


# every object created in one file ----------------------------------------------

_CREATE = re.compile(
    r"\bcreate\s+(?:or\s+replace\s+)?(?:unique\s+)?"
    r"(function|procedure|view|table|index|trigger|policy|type|domain|schema)\s+"
    r"(?:if\s+not\s+exists\s+)?([\w.\"]+)", re.IGNORECASE)
_ADD_COLUMN = re.compile(r"\badd\s+column\s+(?:if\s+not\s+exists\s+)?([\w\"]+)", re.IGNORECASE)
_ON_TABLE = re.compile(r"\son\s+([\w.\"]+)", re.IGNORECASE)


def created_objects(sql: str) -> tuple[list[tuple[str, str]], list[str]]:
    """The (kind, name) of every object a migration creates (a trigger or policy
    is named with its table), and every column it adds to an existing table.
    Comments and quoted strings are left out, so neither a comment nor an
    object's description nor dynamic SQL in a string counts; function bodies
    (dollar-quoted) are kept, as a DO block may create objects."""
    code = re.sub(r"--[^\n]*|'(?:[^']|'')*'", " ", sql)
    objects = []
    for match in _CREATE.finditer(code):
        kind, name = match.group(1).lower(), match.group(2).lower().replace('"', "")
        if kind in ("trigger", "policy"):
            statement = code[match.end():code.find(";", match.end())]
            name = f"{name} on {_ON_TABLE.search(statement).group(1).lower()}"
        objects.append((kind, name))
    return objects, [m.group(1) for m in _ADD_COLUMN.finditer(code)]


def redefinitions(files: dict[str, str]) -> dict[tuple[str, str], list[str]]:
    """Objects created in more than one file (or, but for function overloads,
    twice in one), with the files that create them."""
    where = defaultdict(list)
    for name, sql in files.items():
        objects, _ = created_objects(sql)
        for obj in objects:
            if obj[0] != "function" or name not in where[obj]:
                where[obj].append(name)
    return {obj: names for obj, names in where.items() if len(names) > 1}


def test_every_object_is_created_in_exactly_one_file():
    files = {f.name: f.read_text() for f in migrations.sql_files()}
    assert redefinitions(files) == {}
    # a table's columns are all in its create table
    assert {name: created_objects(sql)[1] for name, sql in files.items()
            if created_objects(sql)[1]} == {}
    found = {obj for sql in files.values() for obj in created_objects(sql)[0]}
    assert {("table", "flowmesh.node_records"), ("view", "public.nodes"),
            ("function", "flowmesh.apply_heartbeats"), ("index", "tetrahedrons_last_heartbeat_at_idx"),
            ("trigger", "mesh_heartbeats_apply on public.mesh_heartbeats"),
            ("policy", "nodes_select_authenticated on public.nodes")} - found == \
        {("policy", "nodes_select_authenticated on public.nodes")}  # a view has no policy
    assert len(found) > 80


def test_the_redefinition_check_catches_one():
    first = "-- 0001_a.sql\ncreate table if not exists public.t (id int);\n" \
            "create or replace function f() returns int language sql as $$ select 1 $$;\n" \
            "create function f(x int) returns int language sql as $$ select x $$;\n" \
            "create policy p on public.t for select using (true);\n"
    second = "-- 0002_b.sql\n-- create table public.t, in a comment, does not count\n" \
             "comment on table public.t is 'create table public.t';\n" \
             "create or replace function f() returns int language sql as $$ select 2 $$;\n" \
             "create policy p on public.u for select using (true);\n" \
             "alter table public.t add column if not exists x int;\n"
    assert redefinitions({"0001_a.sql": first, "0002_b.sql": second}) == {
        ("function", "f"): ["0001_a.sql", "0002_b.sql"]}
    assert created_objects(second)[1] == ["x"]


def schema_dump(url: str) -> str:
    """The schema, less the daily partitions: a run that crosses UTC midnight
    creates the next day's, which is not a change of schema."""
    out = subprocess.run(
        [str(embedded.pg_bin("pg_dump")), "--schema-only", "--no-owner",
         "--exclude-schema=flowmesh_partitions", url],
        check=True, capture_output=True, text=True,
    ).stdout
    # pg_dump 18 brackets the dump with a random \restrict key
    return "\n".join(ln for ln in out.splitlines() if not ln.startswith(("\\restrict", "\\unrestrict")))


def partitions(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {r[0] for r in conn.execute(
            "select relname from pg_class where relnamespace = 'flowmesh_partitions'::regnamespace "
            "and relkind = 'r'")}


def test_applying_migrations_twice_changes_nothing(db_url):
    before, days = schema_dump(db_url), partitions(db_url)
    assert "flowmesh_partitions.mesh_heartbeats_" not in before  # compared below, not here
    with psycopg.connect(db_url) as conn:
        for f in migrations.sql_files():
            migrations.execute_sql_file(conn, f.name[:4])
        conn.commit()
    migrations.upgrade(db_url)  # at head: a no-op
    assert schema_dump(db_url) == before
    after = partitions(db_url)
    assert days <= after and len(after - days) <= 1  # at most a new day, if midnight passed
    with psycopg.connect(db_url) as conn:
        assert migrations.current_revision(conn) == migrations.head_revision()


def test_alembic_upgrade_head_from_the_command_line(empty_db_url):
    env = {**os.environ, "FLOWMESH_DATABASE_URL": empty_db_url}
    subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=ROOT, env=env, check=True, capture_output=True, text=True, timeout=120,
    )
    with psycopg.connect(empty_db_url) as conn:
        assert migrations.current_revision(conn) == migrations.head_revision()
        assert conn.execute("select to_regclass('public.mesh_heartbeats')").fetchone()[0]


def test_devices_are_refused_on_a_database_migrated_by_an_earlier_cut(empty_db_url):
    # the chain was edited in place before release: a database migrated before
    # has the old write rule, which trusts claims a device may set itself
    migrations.upgrade(empty_db_url, "0012")
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        conn.execute("drop function flowmesh.authorize_writer(uuid, text[], boolean)")
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="earlier, unreleased cut"):
        migrations.upgrade(empty_db_url)
    with psycopg.connect(empty_db_url) as conn:
        assert migrations.current_revision(conn) == "0012"
        assert conn.execute("select to_regclass('flowmesh.device_credentials')").fetchone() == (None,)


def test_a_session_holding_the_migration_lock_cannot_stall_a_migration(db_url, monkeypatch):
    monkeypatch.setattr(migrations, "MIGRATION_LOCK_WAIT_S", 1.0)
    with psycopg.connect(db_url, autocommit=True, application_name="squatter") as holder:
        holder.execute("select pg_advisory_lock(%s)", (migrations.LOCK_KEY,))
        held_by = rf"held by pid {holder.info.backend_pid} \(postgres, squatter\)"
        with pytest.raises(FlowMeshError, match=held_by):
            migrations.upgrade(db_url)
    migrations.upgrade(db_url)  # once it is let go


# linter-style checks --------------------------------------------------------

def rows(conn, sql):
    return conn.execute(sql).fetchall()


# the tables and views the migrations create: the API's, and the private
# schema's (all but Alembic's version table)
OWN_RELATIONS = """
    select c.oid, c.oid::regclass::text as name, c.relkind, c.relrowsecurity, c.reloptions
      from pg_class c
     where c.relnamespace in ('public'::regnamespace, 'flowmesh'::regnamespace)
       and c.relkind in ('r', 'p', 'v')
       and c.oid <> 'flowmesh.alembic_version'::regclass"""


def test_every_table_has_rls_a_policy_and_a_comment(conn):
    tables = rows(conn, f"""
        select r.name, r.relrowsecurity, obj_description(r.oid, 'pg_class'),
               (select count(*) from pg_policy p where p.polrelid = r.oid)
          from ({OWN_RELATIONS}) r where r.relkind in ('r', 'p')""")
    assert {t[0] for t in tables} >= {"tetrahedrons", "mesh_heartbeats", "guardian_alerts",
                                       "flowmesh.node_records"}
    for name, rls, comment, policies in tables:
        assert rls, f"{name}: row-level security disabled"
        assert comment, f"{name}: no comment"
        assert policies > 0, f"{name}: RLS enabled without policies"


def test_every_view_runs_with_the_callers_rights_and_has_a_comment(conn):
    views = rows(conn, f"""
        select r.name, coalesce(r.reloptions, '{{}}'), obj_description(r.oid, 'pg_class')
          from ({OWN_RELATIONS}) r where r.relkind = 'v'""")
    assert {v[0] for v in views} >= {"nodes", "mesh_summary", "node_status_timeline"}
    for name, options, comment in views:
        assert "security_invoker=true" in options, f"{name}: not security_invoker"
        assert comment, f"{name}: no comment"


def test_no_always_true_policies(conn):
    assert rows(conn, """
        select polname from pg_policy
         where coalesce(pg_get_expr(polqual, polrelid), '') in ('true', '')
           and coalesce(pg_get_expr(polwithcheck, polrelid), '') in ('true', '')""") == []


def test_functions_pin_search_path_and_are_documented(conn):
    functions = rows(conn, """
        select p.oid::regprocedure::text, p.proconfig, obj_description(p.oid, 'pg_proc'),
               p.prosecdef, l.lanname
          from pg_proc p join pg_namespace n on n.oid = p.pronamespace
          join pg_language l on l.oid = p.prolang
         where n.nspname in ('public', 'flowmesh')""")
    assert len(functions) >= 10
    for name, config, comment, definer, language in functions:
        assert comment, f"{name}: no comment"
        pinned = bool(config) and any(c.startswith("search_path=") for c in config)
        if pinned:
            continue
        # the one exception: SQL helpers the planner must inline (a SET clause
        # prevents it); they run with the caller's rights and say so
        assert not definer and language == "sql" and "Inlinable" in comment, \
            f"{name}: mutable search_path"


def test_definer_functions_not_callable_by_anon_or_public(conn):
    exposed = rows(conn, """
        select p.oid::regprocedure::text
          from pg_proc p join pg_namespace n on n.oid = p.pronamespace
         where n.nspname in ('public', 'flowmesh') and p.prosecdef
           and (has_function_privilege('anon', p.oid, 'execute')
                or exists (select from aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
                            where a.grantee = 0 and a.privilege_type = 'EXECUTE'))""")
    assert exposed == []


def test_foreign_keys_are_indexed(conn):
    unindexed = rows(conn, """
        select c.conrelid::regclass::text, c.conname
          from pg_constraint c
         where c.contype = 'f'
           and c.connamespace in ('public'::regnamespace, 'flowmesh'::regnamespace)
           and not exists (
             select from pg_index i
              where i.indrelid = c.conrelid
                and (i.indkey::int2[])[0:cardinality(c.conkey) - 1] = c.conkey)""")
    assert unindexed == []


def test_index_names_follow_the_convention(conn):
    for (name,) in rows(conn, """
        select indexrelid::regclass::text from pg_index i
          join pg_class c on c.oid = i.indrelid
         where c.relnamespace in ('public'::regnamespace, 'flowmesh'::regnamespace)
           and not i.indisprimary and c.relname <> 'alembic_version'"""):
        assert name.endswith("_idx"), name


@pytest.mark.parametrize("role", ["anon", "authenticated", "service_role"])
def test_api_roles_exist(conn, role):
    assert rows(conn, f"select 1 from pg_roles where rolname = '{role}'") == [(1,)]


def test_migrating_and_running_as_a_non_superuser_owner(pg_server):
    """As on Supabase, where migrations run as a database owner that is not a
    superuser. What a superuser provides first: the database (owned by that
    role, so it may create schemas in it) and the API roles anon,
    authenticated and service_role (service_role with BYPASSRLS, which only a
    superuser may grant; Supabase has them, and 0001 creates them when it runs
    as a superuser, as it did for this cluster's template). No extension is
    needed: gen_random_uuid() is built in since PostgreSQL 13."""
    suffix = uuid.uuid4().hex[:8]
    owner, name = f"flowmesh_owner_{suffix}", f"owned_{suffix}"
    admin = pg_server.get_uri()
    with psycopg.connect(admin, autocommit=True) as conn:
        for role in ("anon", "authenticated", "service_role"):
            assert rows(conn, f"select 1 from pg_roles where rolname = '{role}'") == [(1,)]
        conn.execute(f"create role {owner} login nosuperuser nocreatedb nocreaterole")
        conn.execute(f"create database {name} owner {owner}")
    url = pg_server.get_postmaster_info().get_uri(user=owner, database=name)
    try:
        migrations.upgrade(url)
        with psycopg.connect(url, autocommit=True) as conn:
            assert rows(conn, "select rolsuper from pg_roles where rolname = current_user") == [(False,)]
            assert migrations.current_revision(conn) == migrations.head_revision()
            (tid,) = conn.execute("select register_node('home', 'pi')").fetchone()
            conn.execute("select record_mesh_heartbeat(%s, 'pi', '{\"metrics\": {\"cpu_percent\": 9}}')",
                         (tid,))
            conn.execute("select record_mesh_heartbeats(%s, %s)", (tid, '[{"src": "cam", "seq": 1, '
                         f'"at": {__import__("time").time() - 86400 * 40}, "payload": {{}}}}]'))
            conn.execute("select record_mesh_events(%s, %s)", (tid, '[{"observer": "pi", "seq": 1, '
                         f'"kind": "dead", "subject": "cam", "at": {__import__("time").time()}}}]'))
            cycle = conn.execute("select checked, stale, nodes_scored, marked_offline "
                                 "from run_scheduled_checks(0, 30)").fetchone()
            assert cycle == (1, 1, 1, 1)  # cam's only heartbeat is 40 days old
            assert conn.execute("select dropped from maintain_heartbeat_partitions('30 days')"
                                ).fetchone() == (1,)
            assert rows(conn, "select node_id, status, mesh_status from nodes order by 1") == [
                ("cam", "offline", "dead"), ("pi", "online", None)]
            conn.execute("select id from propose_guardian_decision(%s, 'quarantine', 'cam', 'pi')", (tid,))
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"drop database {name} with (force)")
            conn.execute(f"drop owned by {owner}")
            conn.execute(f"drop role {owner}")
