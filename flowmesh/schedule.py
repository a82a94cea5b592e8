"""Schedules: pg_cron jobs that run FlowMesh's SQL on a cadence.

Two jobs, named so they can be listed and removed:

* ``flowmesh-check``: ``check_mesh_heartbeats_and_alert(<threshold>)``
* ``flowmesh-predict``: ``run_prediction_pass()`` and ``close_expired_decisions()``
* ``flowmesh-retention`` (daily, 03:15 UTC): ``maintain_heartbeat_partitions(<retention>)``

Where pg_cron is missing, ``python -m monitors.mesh_health --every`` runs the
same functions on the same cadence.
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


RETENTION_SCHEDULE = "15 3 * * *"


def jobs(threshold_minutes: int) -> dict[str, str]:
    """Job name -> SQL command, for the jobs that run at the chosen cadence."""
    return {
        f"{JOB_PREFIX}check": f"select public.check_mesh_heartbeats_and_alert({int(threshold_minutes)})",
        f"{JOB_PREFIX}predict":
            "select public.run_prediction_pass(); select public.close_expired_decisions()",
    }


def retention_command(retention_days: int) -> str:
    return f"select public.maintain_heartbeat_partitions(interval '{int(retention_days)} days')"


def fallback_hint(every: str, threshold_minutes: int) -> str:
    return (f"python -m monitors.mesh_health --threshold-minutes {threshold_minutes} --every {every}")


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
        conn.execute("create extension if not exists pg_cron")
    except psycopg.Error as exc:
        raise FlowMeshError(f"cannot create the pg_cron extension: {exc.diag.message_primary}") from exc
    return conn.execute(query("cron_version")).fetchone()[0]


def install(conn: psycopg.Connection, every: str, threshold_minutes: int,
            retention_days: int = 30) -> list[tuple[str, str, str]]:
    seconds = parse_every(every)
    version = ensure_pg_cron(conn)
    schedule = cron_schedule(seconds, version)
    planned = [(name, schedule, command) for name, command in jobs(threshold_minutes).items()]
    planned.append((f"{JOB_PREFIX}retention", RETENTION_SCHEDULE, retention_command(retention_days)))
    for name, when, command in planned:
        conn.execute(query("cron_schedule"), {"name": name, "schedule": when, "command": command})
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
