"""The ordered SQL files in ``sql/`` and the Alembic chain that applies them.

Each Alembic revision executes one SQL file, and revision ids are the files'
number prefixes (``0001``...), so the chain and the files cannot drift apart
(a test checks it). ``supabase/migrations/`` carries the same files under the
Supabase CLI's names.
"""

from __future__ import annotations

from pathlib import Path

import psycopg

from .errors import FlowMeshError
from .queries import query

_PACKAGE = Path(__file__).resolve().parent
_REPO = _PACKAGE.parent

#: Schema holding Alembic's version table, so the API schema stays clean
#: (the migration_* named queries spell it out; a test keeps them in step).
VERSION_SCHEMA = "flowmesh"
#: Advisory lock key serialising concurrent migrators (agents starting together).
LOCK_KEY = 0x466C6F774D657368  # "FlowMesh"
#: Seconds a migrator waits for that lock (migrations take seconds; any role may
#: take an advisory lock, so the wait must end).
MIGRATION_LOCK_WAIT_S = 60.0


def _resource(name: str) -> Path:
    # In a wheel the directories are packaged inside flowmesh/; in a checkout
    # (editable install) they sit at the repository root.
    for base in (_PACKAGE, _REPO):
        if (base / name).is_dir():
            return base / name
    raise FlowMeshError(f"cannot find the {name}/ directory of FlowMesh")


def sql_dir() -> Path:
    return _resource("sql")


def alembic_dir() -> Path:
    return _resource("alembic")


def sql_files() -> list[Path]:
    return sorted(sql_dir().glob("[0-9][0-9][0-9][0-9]_*.sql"))


def head_revision() -> str:
    return sql_files()[-1].name[:4]


def sql_file(revision: str) -> Path:
    matches = [f for f in sql_files() if f.name.startswith(revision + "_")]
    if len(matches) != 1:
        raise FlowMeshError(f"no single SQL file for revision {revision}")
    return matches[0]


def execute_sql_file(driver_connection: psycopg.Connection, revision: str) -> None:
    """Run one migration file on a psycopg connection, inside its transaction.

    Without parameters psycopg sends the text as one simple query, so a file
    may hold many statements and ``%`` needs no escaping.
    """
    driver_connection.execute(sql_file(revision).read_text())


def current_revision(conn: psycopg.Connection) -> str | None:
    (present,) = conn.execute(query("migration_table")).fetchone()
    if not present:
        return None
    row = conn.execute(query("migration_revision")).fetchone()
    return row[0] if row else None


def alembic_config(url: str):
    from alembic.config import Config  # noqa: PLC0415 (alembic is only needed to migrate)

    config = Config()
    config.set_main_option("script_location", str(alembic_dir()))
    config.attributes["database_url"] = url
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Apply every migration up to ``revision`` (``alembic upgrade head``)."""
    from alembic import command  # noqa: PLC0415

    command.upgrade(alembic_config(url), revision)
