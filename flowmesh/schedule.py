"""Schedules: FlowMesh's scheduled work on a cadence, in the database (pg_cron).

The work is two SQL functions, and each job runs a named query of
``queries.sql`` with its arguments bound: the very text the fallback loop
(``python -m monitors.mesh_health --every``) executes, so both run the same
SQL with the same threshold, window and retention.

* ``flowmesh-checks``, every PERIOD: ``run_scheduled_checks(threshold_minutes,
  window_size)``: the heartbeat check, the prediction pass (which also logs
  offline periods) and closing expired guardian decisions.
* ``flowmesh-retention``, daily at 03:15 UTC:
  ``maintain_heartbeat_partitions(retention)``: partitions ahead, and the old
  ones dropped. (The loop runs it in its first cycle and then once per UTC day.)
"""

from __future__ import annotations

import re

import psycopg

from .errors import FlowMeshError
from .queries import query

JOB_PREFIX = "flowmesh-"
_EVERY = re.compile(r"^\s*(\d+)\s*(s|sec|seconds?|m|min|minutes?|h|hours?)\s*$", re.IGNORECASE)


def parse_every(text: str) -> int:
    """'30s', '5m', '1h' -> seconds."""
    match = _EVERY.match(text)
    if not match:
        raise FlowMeshError(f"--every {text!r}: use a number and a unit, like 30s, 5m or 1h")
    value, unit = int(match.group(1)), match.group(2)[0].lower()
    seconds = value * {"s": 1, "m": 60, "h": 3600}[unit]
    if seconds <= 0:
        raise FlowMeshError("--every must be more than zero")
    return seconds


def cron_schedule(seconds: int, pg_cron_version: str) -> str:
    """The pg_cron schedule for a period; refuses what the version cannot express."""
    if seconds < 60:
        if tuple(int(p) for p in pg_cron_version.split(".")[:2]) < (1, 5):
            raise FlowMeshError(f"pg_cron {pg_cron_version} schedules by the minute; use --every 1m or more")
        return f"{seconds} seconds"
    if seconds % 3600 == 0 and seconds // 3600 in (1, 2, 3, 4, 6, 8, 12, 24):
        hours = seconds // 3600
        return "0 0 * * *" if hours == 24 else ("0 * * * *" if hours == 1 else f"0 */{hours} * * *")
    if seconds % 60 == 0 and 60 % (seconds // 60) == 0:
        minutes = seconds // 60
        return "* * * * *" if minutes == 1 else f"*/{minutes} * * * *"
    raise FlowMeshError("--every must divide an hour (1m, 5m, 15m...) or a day (1h, 2h, 6h...)")


#: The defaults of the scheduled work: the same as the SQL functions' own
#: (run_scheduled_checks, maintain_heartbeat_partitions), which a test checks.
DEFAULT_THRESHOLD_MINUTES = 60
DEFAULT_WINDOW_SIZE = 30
DEFAULT_RETENTION_DAYS = 30

CHECKS_JOB = f"{JOB_PREFIX}checks"
RETENTION_JOB = f"{JOB_PREFIX}retention"
RETENTION_SCHEDULE = "15 3 * * *"


def checks_call(threshold_minutes: int = DEFAULT_THRESHOLD_MINUTES,
                window_size: int = DEFAULT_WINDOW_SIZE) -> tuple[str, dict]:
    """The SQL of one cycle of scheduled checks, and its parameters."""
    return query("scheduled_checks"), {"threshold_minutes": int(threshold_minutes),
                                       "window_size": int(window_size)}


def retention_call(retention_days: int = DEFAULT_RETENTION_DAYS) -> tuple[str, dict]:
    """The SQL of the daily retention, and its parameters."""
    return query("maintain_partitions"), {"retention_days": int(retention_days)}


def command(conn: psycopg.Connection, call: tuple[str, dict]) -> str:
    """A call as one line of SQL with its arguments bound, for pg_cron to run."""
    sql, params = call
    return " ".join(psycopg.ClientCursor(conn).mogrify(sql, params).split())


def fallback_hint(every: str, threshold_minutes: int,
                  retention_days: int = DEFAULT_RETENTION_DAYS,
                  window_size: int = DEFAULT_WINDOW_SIZE) -> str:
    """The --every loop that runs the same SQL on the same cadence, where pg_cron is missing."""
    hint = f"python -m monitors.mesh_health --threshold-minutes {threshold_minutes} --every {every}"
    if window_size != DEFAULT_WINDOW_SIZE:
        hint += f" --window {window_size}"
    if retention_days != DEFAULT_RETENTION_DAYS:
        hint += f" --retention-days {retention_days}"
    return hint


def ensure_pg_cron(conn: psycopg.Connection) -> str:
    """The pg_cron version, creating the extension when the server allows; else why not."""
    row = conn.execute(query("cron_version")).fetchone()
    if row:
        return row[0]
    available, cron_db, database, preloaded = conn.execute(query("cron_available")).fetchone()
    if not available:
        raise FlowMeshError("pg_cron is not installed on this server")
    if not preloaded:
        raise FlowMeshError("pg_cron is installed but not in shared_preload_libraries")
    if cron_db and cron_db != database:
        raise FlowMeshError(f"pg_cron runs in database {cron_db!r}, not {database!r} (cron.database_name)")
    try:
        conn.execute(query("create_pg_cron"))
    except psycopg.Error as exc:
        raise FlowMeshError(f"cannot create the pg_cron extension: {exc.diag.message_primary}") from exc
    return conn.execute(query("cron_version")).fetchone()[0]


def install(conn: psycopg.Connection, every: str, threshold_minutes: int = DEFAULT_THRESHOLD_MINUTES,
            retention_days: int = DEFAULT_RETENTION_DAYS,
            window_size: int = DEFAULT_WINDOW_SIZE) -> list[tuple[str, str, str]]:
    """Install (or replace) the jobs; returns (job, schedule, command) for each."""
    seconds = parse_every(every)
    version = ensure_pg_cron(conn)
    schedule = cron_schedule(seconds, version)
    planned = [
        (CHECKS_JOB, schedule, command(conn, checks_call(threshold_minutes, window_size))),
        (RETENTION_JOB, RETENTION_SCHEDULE, command(conn, retention_call(retention_days))),
    ]
    for name, when, sql in planned:
        conn.execute(query("cron_schedule"), {"name": name, "schedule": when, "command": sql})
    return planned


def listing(conn: psycopg.Connection) -> tuple[list[str], list[tuple]]:
    if not conn.execute(query("cron_version")).fetchone():
        raise FlowMeshError("pg_cron is not installed in this database: no schedules")
    cur = conn.execute(query("cron_jobs"))
    return [c.name for c in cur.description], cur.fetchall()


def remove(conn: psycopg.Connection) -> list[str]:
    _, rows = listing(conn)
    for row in rows:
        conn.execute(query("cron_unschedule"), {"name": row[0]})
    return [row[0] for row in rows]
