"""Alembic environment: applies sql/ in order to the URL it is given.

The URL comes from (first wins) the programmatic config (``flowmesh db up``),
``-x url=...``, ``$FLOWMESH_DATABASE_URL``, or ``sqlalchemy.url`` in the ini.
Any libpq URL or conninfo string works; psycopg opens the connection.
"""

from __future__ import annotations

import os
import time

import sqlalchemy as sa

from alembic import context
from flowmesh import database, migrations, settings
from flowmesh.errors import FlowMeshError
from flowmesh.queries import query

config = context.config


def _url() -> str:
    url = (
        config.attributes.get("database_url")
        or context.get_x_argument(as_dictionary=True).get("url")
        or os.environ.get(settings.DATABASE_URL_ENV)
        or config.get_main_option("sqlalchemy.url")
    )
    if not url:
        raise SystemExit(
            f"no database URL: set {settings.DATABASE_URL_ENV} or pass -x url=postgresql://..."
        )
    return url


def _take_migration_lock(connection) -> None:
    """Take the migration lock, waiting at most MIGRATION_LOCK_WAIT_S for it."""
    deadline = time.monotonic() + migrations.MIGRATION_LOCK_WAIT_S
    params = {"key": migrations.LOCK_KEY}
    while not connection.exec_driver_sql(query("migration_lock"), params).scalar():
        if time.monotonic() > deadline:
            holders = connection.exec_driver_sql(query("migration_lock_holders"), params).all()
            who = ", ".join(f"pid {pid} ({user}, {app or 'no application name'})"
                            for pid, user, app in holders) or "a session that has just left"
            raise FlowMeshError(f"the migration lock is held by {who}; waited "
                                f"{migrations.MIGRATION_LOCK_WAIT_S:g} s (end that session and retry)")
        time.sleep(0.2)


def run_migrations_online() -> None:
    url = _url()
    engine = sa.create_engine(
        "postgresql+psycopg://",
        creator=lambda: database.connect(url, autocommit=False, application_name="flowmesh-migrate"),
        poolclass=sa.pool.NullPool,
    )
    with engine.connect() as connection:
        # Concurrent migrators (agents starting at once) take turns; the
        # second finds the database at head and does nothing.
        _take_migration_lock(connection)
        connection.exec_driver_sql(query("migration_schema"))
        connection.commit()
        try:
            context.configure(
                connection=connection,
                version_table_schema=migrations.VERSION_SCHEMA,
                transaction_per_migration=True,
            )
            with context.begin_transaction():
                context.run_migrations()
            connection.commit()
        finally:
            connection.exec_driver_sql(query("migration_unlock"), {"key": migrations.LOCK_KEY})
            connection.commit()


if context.is_offline_mode():
    raise SystemExit(
        "offline (--sql) mode is not used: the SQL to apply is sql/*.sql, unchanged, "
        "or supabase/migrations/ for the Supabase CLI"
    )
run_migrations_online()
