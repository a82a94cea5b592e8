"""Migrations: one source, two delivery paths, idempotent, and linted like
Supabase's database linter would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from alembic.script import ScriptDirectory

from flowmesh import embedded, migrations, supabase_sync

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


def schema_dump(url: str) -> str:
    out = subprocess.run(
        [str(embedded.pg_bin("pg_dump")), "--schema-only", "--no-owner", url],
        check=True, capture_output=True, text=True,
    ).stdout
    # pg_dump 18 brackets the dump with a random \restrict key
    return "\n".join(ln for ln in out.splitlines() if not ln.startswith(("\\restrict", "\\unrestrict")))


def test_applying_migrations_twice_changes_nothing(db_url):
    before = schema_dump(db_url)
    with psycopg.connect(db_url) as conn:
        for f in migrations.sql_files():
            migrations.execute_sql_file(conn, f.name[:4])
        conn.commit()
    migrations.upgrade(db_url)  # at head: a no-op
    assert schema_dump(db_url) == before
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


# linter-style checks --------------------------------------------------------

def rows(conn, sql):
    return conn.execute(sql).fetchall()


def test_every_table_has_rls_a_policy_and_a_comment(conn):
    tables = rows(conn, """
        select c.relname, c.relrowsecurity, obj_description(c.oid, 'pg_class'),
               (select count(*) from pg_policy p where p.polrelid = c.oid)
          from pg_class c join pg_namespace n on n.oid = c.relnamespace
         where n.nspname = 'public' and c.relkind in ('r', 'p')""")
    assert {t[0] for t in tables} >= {"tetrahedrons", "mesh_heartbeats", "guardian_alerts"}
    for name, rls, comment, policies in tables:
        assert rls, f"{name}: row-level security disabled"
        assert comment, f"{name}: no comment"
        assert policies > 0, f"{name}: RLS enabled without policies"


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
         where c.contype = 'f' and c.connamespace = 'public'::regnamespace
           and not exists (
             select from pg_index i
              where i.indrelid = c.conrelid
                and (i.indkey::int2[])[0:cardinality(c.conkey) - 1] = c.conkey)""")
    assert unindexed == []


def test_index_names_follow_the_convention(conn):
    for (name,) in rows(conn, """
        select indexrelid::regclass::text from pg_index i
          join pg_class c on c.oid = i.indrelid
         where c.relnamespace = 'public'::regnamespace and not i.indisprimary"""):
        assert name.endswith("_idx"), name


@pytest.mark.parametrize("role", ["anon", "authenticated", "service_role"])
def test_api_roles_exist(conn, role):
    assert rows(conn, f"select 1 from pg_roles where rolname = '{role}'") == [(1,)]
