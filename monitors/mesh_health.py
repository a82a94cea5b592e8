"""Mesh health check, shaped like a monitoring plugin.

    python -m monitors.mesh_health --threshold-minutes 60 [--tetrahedron-id ID] [--json]
    python -m monitors.mesh_health --threshold-minutes 60 --every 5m

With ``--every`` it runs as a loop, the fallback where pg_cron is not
installed: each cycle runs the same SQL as the ``flowmesh schedule`` jobs
(``run_scheduled_checks``: the heartbeat check, the prediction pass over
``--window`` heartbeats, closing expired guardian decisions; and, in the first
cycle and then once per UTC day, ``maintain_heartbeat_partitions`` with
``--retention-days``) and prints one line (or one JSON object); a database
outage is reported and the loop goes on; SIGINT or SIGTERM stops it cleanly
(exit 0).

Runs ``check_mesh_heartbeats_and_alert`` (which opens a mesh-degrading
guardian alert for each silent tetrahedron, at most once, and resolves alerts
whose heartbeats came back), then prints the stale tetrahedrons and the open
alerts. Exit status, as Nagios/Icinga plugins use it:

    0  every tetrahedron has sent a heartbeat within the threshold
    2  at least one tetrahedron is stale
    3  the check could not run (database unreachable, bad arguments); one line says why
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
import uuid
from datetime import UTC, datetime

import click
import psycopg
from psycopg.rows import dict_row

from flowmesh import database, schedule
from flowmesh.clisupport import database_url_option
from flowmesh.errors import FlowMeshError, describe
from flowmesh.queries import query
from flowmesh.schedule import parse_every
from flowmesh.table import json_default, render

OK, CRITICAL, UNKNOWN = 0, 2, 3


def run_check(conn: psycopg.Connection, threshold_minutes: int, tetrahedron_id: str | None) -> dict:
    """Run the SQL checker and gather what it found, in one transaction."""
    params = {"threshold_minutes": threshold_minutes, "tetrahedron_id": tetrahedron_id}
    with conn.transaction():
        created = _rows(conn, "check_one" if tetrahedron_id else "check_all", params)
        stale = _rows(conn, "stale_tetrahedrons", params)
        open_alerts = _rows(conn, "open_alerts", params)
        (checked,) = (
            (1,) if tetrahedron_id else conn.execute(query("tetrahedron_count")).fetchone()
        )
    return {
        "threshold_minutes": threshold_minutes,
        "tetrahedron_id": tetrahedron_id,
        "checked": checked,
        "stale": stale,
        "alerts_created": created,
        "open_alerts": open_alerts,
    }


def _rows(conn: psycopg.Connection, name: str, params: dict | None = None) -> list[dict]:
    return conn.cursor(row_factory=dict_row).execute(query(name), params).fetchall()


def _silence(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s"


def render_text(result: dict) -> str:
    stale, created, open_alerts = result["stale"], result["alerts_created"], result["open_alerts"]
    status = "CRITICAL" if stale else "OK"
    lines = [
        f"MESH HEALTH {status} - {len(stale)} of {result['checked']} tetrahedrons silent for more "
        f"than {result['threshold_minutes']} min; {len(created)} alerts opened, "
        f"{len(open_alerts)} open"
    ]
    if stale:
        lines += ["", "stale tetrahedrons:"]
        lines.append(render(
            ["tetrahedron", "id", "last heartbeat", "silent for"],
            [(s["name"], s["tetrahedron_id"], s["last_heartbeat_at"], _silence(s["silent_for_s"]))
             for s in stale],
        ))
    if open_alerts:
        lines += ["", "open alerts:"]
        new = {a["id"] for a in created}
        lines.append(render(
            ["id", "tetrahedron", "type", "since", "message"],
            [(f"{a['id']}{' (new)' if a['id'] in new else ''}", a["tetrahedron"], a["alert_type"],
              a["created_at"], a["message"]) for a in open_alerts],
        ))
    return "\n".join(lines)


def run_scheduled(conn: psycopg.Connection, threshold_minutes: int,
                  window_size: int = schedule.DEFAULT_WINDOW_SIZE,
                  retention_days: int | None = None) -> dict:
    """One cycle of the scheduled work, through the same SQL as the pg_cron jobs
    (flowmesh.schedule): the scheduled checks, then retention when ``retention_days`` is given."""
    cur = conn.cursor(row_factory=dict_row)
    result = dict(cur.execute(*schedule.checks_call(threshold_minutes, window_size)).fetchone())
    if retention_days is not None:
        result["partitions"] = cur.execute(*schedule.retention_call(retention_days)).fetchone()
    return result


def loop(url: str, threshold_minutes: int, period_s: float, as_json: bool,
         stop: threading.Event, window_size: int = schedule.DEFAULT_WINDOW_SIZE,
         retention_days: int = schedule.DEFAULT_RETENTION_DAYS) -> None:
    """Run a cycle every ``period_s`` seconds until ``stop`` is set. Retention
    (idempotent) runs in the first cycle and then in the first cycle of each UTC day."""
    next_at = time.monotonic()
    conn = None
    retained_on = None  # the UTC day retention last ran
    while not stop.is_set():
        started = time.strftime("%Y-%m-%dT%H:%M:%S")
        today = datetime.now(UTC).date()
        try:
            if conn is None or conn.closed or conn.broken:
                conn = database.connect(url)
            r = run_scheduled(conn, threshold_minutes, window_size,
                              retention_days if retained_on != today else None)
            if "partitions" in r:
                retained_on = today
            if as_json:
                click.echo(json.dumps({"at": started, **r}, default=json_default))
            else:
                line = (f"{started} {'CRITICAL' if r['stale'] else 'OK'}: {r['stale']} of {r['checked']} "
                        f"stale, {r['alerts_opened']} alerts opened; {r['nodes_scored']} nodes scored, "
                        f"{r['risk_alerts_opened']} risk alerts opened, {r['risk_alerts_resolved']} "
                        f"resolved; {r['marked_offline']} went offline; "
                        f"{r['decisions_closed']} decisions closed")
                if "partitions" in r:
                    line += (f"; partitions {r['partitions']['created']} created, "
                             f"{r['partitions']['dropped']} dropped")
                click.echo(line)
        except (FlowMeshError, psycopg.Error) as exc:
            click.echo(f"{started} UNKNOWN: {describe(exc).message}", err=True)
            if conn is not None:
                conn.close()
            conn = None
        next_at += period_s
        stop.wait(max(0.0, next_at - time.monotonic()))
    if conn is not None:
        conn.close()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--threshold-minutes", type=click.IntRange(min=0), default=60, show_default=True,
              help="A tetrahedron with no heartbeat for longer than this is stale.")
@click.option("--tetrahedron-id", metavar="UUID", help="Check only this tetrahedron.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--every", metavar="PERIOD",
              help="Run as a loop every PERIOD (30s, 5m, 1h): the scheduled checks where pg_cron "
              "is not installed. Stops on SIGINT/SIGTERM.")
@click.option("--window", "window_size", type=click.IntRange(min=2), default=schedule.DEFAULT_WINDOW_SIZE,
              show_default=True, help="With --every: heartbeats per node the prediction pass looks at.")
@click.option("--retention-days", type=click.IntRange(min=1), default=schedule.DEFAULT_RETENTION_DAYS,
              show_default=True, help="With --every: heartbeats older than this are dropped (daily).")
@database_url_option
def main(threshold_minutes: int, tetrahedron_id: str | None, as_json: bool, every: str | None,
         window_size: int, retention_days: int, database_url: str | None) -> None:
    """Check mesh heartbeats, open guardian alerts for silent tetrahedrons.

    Exit status: 0 all well, 2 a tetrahedron is stale, 3 the check could not run.
    """
    if every is not None:
        try:
            period = parse_every(every)
            if tetrahedron_id is not None:
                raise FlowMeshError("--every runs the checks for every tetrahedron; drop --tetrahedron-id")
            url = database.resolve_url(database_url)
        except FlowMeshError as exc:
            _unknown(str(exc))
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        loop(url, threshold_minutes, period, as_json, stop, window_size, retention_days)
        sys.exit(OK)
    try:
        if tetrahedron_id is not None:
            try:
                tetrahedron_id = str(uuid.UUID(tetrahedron_id))
            except ValueError:
                raise FlowMeshError(f"--tetrahedron-id {tetrahedron_id!r} is not a UUID") from None
        url = database.resolve_url(database_url)
        with database.connect(url) as conn:
            result = run_check(conn, threshold_minutes, tetrahedron_id)
    except (FlowMeshError, psycopg.Error) as exc:
        _unknown(describe(exc).message)
    if as_json:
        click.echo(json.dumps(result, default=json_default, indent=2))
    else:
        click.echo(render_text(result))
    sys.exit(CRITICAL if result["stale"] else OK)


def _unknown(reason: str) -> None:
    click.echo(f"MESH HEALTH UNKNOWN - {reason}", err=True)
    sys.exit(UNKNOWN)


def cli(args: list[str] | None = None) -> None:
    """Entry point: like ``main`` but a bad flag exits 3 (UNKNOWN), not click's 2,
    which a monitoring system would read as CRITICAL."""
    try:
        main.main(args=args, prog_name="python -m monitors.mesh_health", standalone_mode=False)
    except click.exceptions.Exit as exc:  # --help
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        _unknown(exc.format_message())
    except click.Abort:
        _unknown("interrupted")
    sys.exit(OK)


if __name__ == "__main__":
    cli()
