"""Mesh health check, shaped like a monitoring plugin.

    python -m monitors.mesh_health --threshold-minutes 60 [--tetrahedron-id ID] [--json]

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
import sys
import uuid

import click
import psycopg

from flowmesh import database
from flowmesh.clisupport import database_url_option
from flowmesh.errors import FlowMeshError
from flowmesh.queries import query
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


def _rows(conn: psycopg.Connection, name: str, params: dict) -> list[dict]:
    cur = conn.execute(query(name), params)
    names = [c.name for c in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


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


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--threshold-minutes", type=click.IntRange(min=0), default=60, show_default=True,
              help="A tetrahedron with no heartbeat for longer than this is stale.")
@click.option("--tetrahedron-id", metavar="UUID", help="Check only this tetrahedron.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@database_url_option
def main(threshold_minutes: int, tetrahedron_id: str | None, as_json: bool,
         database_url: str | None) -> None:
    """Check mesh heartbeats, open guardian alerts for silent tetrahedrons.

    Exit status: 0 all well, 2 a tetrahedron is stale, 3 the check could not run.
    """
    try:
        if tetrahedron_id is not None:
            try:
                tetrahedron_id = str(uuid.UUID(tetrahedron_id))
            except ValueError:
                raise FlowMeshError(f"--tetrahedron-id {tetrahedron_id!r} is not a UUID") from None
        url = database.resolve_url(database_url)
        with database.connect(url) as conn:
            result = run_check(conn, threshold_minutes, tetrahedron_id)
    except FlowMeshError as exc:
        _unknown(str(exc))
    except psycopg.OperationalError as exc:
        _unknown(f"cannot reach the database: {database.one_line(exc)}")
    except psycopg.Error as exc:
        _unknown(f"database error [{exc.sqlstate}]: {database.one_line(exc)}")
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
