"""``flowmesh``: the operator command line (database, tetrahedrons, nodes)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import click
from psycopg.rows import dict_row

from monitors.dashboard.command import dashboard as dashboard_command

from . import database, devices, embedded, migrations, pooler, settings, stack
from . import schedule as schedules
from .clisupport import FriendlyGroup, database_url_option
from .errors import DatabaseUnreachable, FlowMeshError
from .queries import query
from .table import json_default, render


@click.group(cls=FriendlyGroup, prog="flowmesh")
@click.version_option(package_name="flowmesh")
def main() -> None:
    """FlowMesh operator CLI: the database, tetrahedrons and nodes.

    Without --database-url (or FLOWMESH_DATABASE_URL) every command uses the
    embedded PostgreSQL kept in the data directory (FLOWMESH_DATA_DIR).
    """


@main.group()
def db() -> None:
    """Start, stop and inspect the database."""


@db.command("up")
@database_url_option
@click.option("--pooler", "with_pooler", is_flag=True,
              help="Also run PgBouncer (transaction pooling) beside the embedded server, "
              "and print its URL instead.")
@click.option("--listen", metavar="ADDR",
              help="With --pooler: the IP address of this machine PgBouncer listens on, and "
              "device URLs name (remembered; default 127.0.0.1, this machine only).")
def db_up(database_url: str | None, with_pooler: bool, listen: str | None) -> None:
    """Start (or reuse) the embedded server, apply migrations, print the URL.

    The embedded server keeps embedded.RESERVED_CONNECTIONS connection slots for
    operator roles (restarting once when that changes). With --pooler, PgBouncer
    runs beside it (see `flowmesh db url --pooled`).

    With --database-url nothing is started: the migrations are applied to that
    server, which must be PostgreSQL 15 or newer.
    """
    if database_url and with_pooler:
        raise FlowMeshError(
            "--pooler runs PgBouncer beside the embedded server only; a server given by URL "
            "has its own pooler (PgBouncer, Supabase's Supavisor): give agents that URL"
        )
    if listen is not None and not with_pooler:
        raise FlowMeshError("--listen is the pooler's address: use it with --pooler")
    if listen is not None:
        pooler.check_listen_addr(listen)  # before anything starts
    if with_pooler and pooler.binary() is None:
        raise FlowMeshError(pooler.INSTALL_HINT)
    if database_url:
        with database.connect(database_url) as conn:
            version_num, version = conn.execute(query("server_version")).fetchone()
        if version_num < 150000:
            raise FlowMeshError(f"PostgreSQL {version} is too old; FlowMesh needs 15 or newer")
        url = database_url
        migrations.upgrade(url)
    else:
        url, pooled = stack.start_embedded(with_pooler, listen, echo=lambda line: click.echo(line, err=True))
        if pooled:
            url = pooled
            click.echo(f"PgBouncer (transaction pooling) listening on {pooler.embedded().listen_addr()}:"
                       f"{pooler.embedded().port()}; devices connect as "
                       f"{pooler.embedded().url(user='<device>')}", err=True)
    click.echo(url)


@db.command("url")
@database_url_option
@click.option("--pooled", is_flag=True, help="The URL through the embedded server's PgBouncer.")
def db_url(database_url: str | None, pooled: bool) -> None:
    """Print the database URL (the embedded server must be running)."""
    if pooled:
        if database_url:
            raise FlowMeshError("--pooled names the embedded server's PgBouncer; for a server given "
                                "by URL, its pooler's URL is the one to use")
        url = pooler.running_url(None)
        if url is None:
            raise DatabaseUnreachable("the embedded pooler is not running "
                                      "(start it with `flowmesh db up --pooler`)")
        click.echo(url)
        return
    click.echo(database.resolve_url(database_url, start=False))


@db.command("stop")
@database_url_option
def db_stop(database_url: str | None) -> None:
    """Stop the embedded server and its pooler (a server given by URL is never stopped)."""
    if database_url:
        raise FlowMeshError(
            "--database-url names a server FlowMesh did not start; only the embedded one is stopped"
        )
    if pooler.stop(pooler.embedded()):
        click.echo(f"stopped PgBouncer in {pooler.directory()}")
    if embedded.stop():
        click.echo(f"stopped the embedded PostgreSQL in {embedded.pgdata()}")
    else:
        click.echo("the embedded PostgreSQL is not running")


@db.command("status")
@database_url_option
def db_status(database_url: str | None) -> None:
    """Show where the database is, its pooler, and whether its migrations are current."""
    if database_url:
        url = database_url
    else:
        status = embedded.status()
        click.echo(f"embedded data directory: {status.pgdata}")
        click.echo(f"pooler: {_pooler_status()}")
        if not status.running:
            click.echo("embedded server: stopped (start it with `flowmesh db up`)")
            return
        click.echo(f"embedded server: running, pid {status.pid}")
        url = status.url
    with database.connect(url) as conn:
        current = migrations.current_revision(conn)
        _, version = conn.execute(query("server_version")).fetchone()
    head = migrations.head_revision()
    click.echo(f"url: {url}")
    click.echo(f"server: PostgreSQL {version}")
    click.echo(f"migrations: {current or 'none'} (head {head}{', current' if current == head else ''})")


def _pooler_status() -> str:
    embedded_pooler = pooler.embedded()
    pid = embedded_pooler.pid()
    if pid:
        return (f"PgBouncer running, pid {pid}, on {embedded_pooler.listen_addr()}:{embedded_pooler.port()} "
                f"({embedded_pooler.url()})")
    if pooler.binary() is None:
        return "not installed (`apt-get install pgbouncer`, then `flowmesh db up --pooler`)"
    return "stopped (start it with `flowmesh db up --pooler`)"


@db.command("psql", context_settings={"ignore_unknown_options": True})
@database_url_option
@click.argument("psql_args", nargs=-1, type=click.UNPROCESSED)
def db_psql(database_url: str | None, psql_args: tuple[str, ...]) -> None:
    """Open psql on the database; extra arguments go to psql."""
    url = database.resolve_url(database_url)
    psql = shutil.which("psql")
    if psql is None:
        psql = str(embedded.pg_bin("psql"))
    sys.stdout.flush()
    os.execv(psql, [psql, url, *psql_args])


@main.command("tetrahedrons")
@database_url_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def tetrahedrons(database_url: str | None, as_json: bool) -> None:
    """List tetrahedrons with their vertices, last heartbeat and open alerts."""
    with database.connect(database.resolve_url(database_url)) as conn:
        cur = conn.execute(query("list_tetrahedrons"))
        rows = cur.fetchall()
        names = [c.name for c in cur.description]
    _emit(names, rows, as_json)


@main.command("nodes")
@database_url_option
@click.option("--tetrahedron", metavar="NAME", help="Only the nodes of this tetrahedron.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def nodes(database_url: str | None, tetrahedron: str | None, as_json: bool) -> None:
    """List nodes with their status, last heartbeat and latest metrics."""
    with database.connect(database.resolve_url(database_url)) as conn:
        cur = conn.execute(query("list_nodes"), {"tetrahedron": tetrahedron})
        rows = cur.fetchall()
        names = [c.name for c in cur.description]
    _emit(names, rows, as_json)


@main.command("register")
@database_url_option
@click.argument("tetrahedron")
@click.argument("node_id")
@click.option("--role", help="The node's role (sensor, orchestrator, witness, ...).")
@click.option("--user-id", metavar="UUID", help="The Supabase user who owns the device.")
def register(
    database_url: str | None, tetrahedron: str, node_id: str, role: str | None, user_id: str | None
) -> None:
    """Make NODE_ID a vertex of TETRAHEDRON (created when missing); print its id."""
    with database.connect(database.resolve_url(database_url), autocommit=False) as conn:
        (tetra_id,) = conn.execute(
            query("register_node"), {"tetrahedron": tetrahedron, "node_id": node_id, "role": role}
        ).fetchone()
        if user_id:
            conn.execute(
                query("add_vertex"),
                {"tetrahedron": tetrahedron, "node_id": node_id, "user_id": user_id},
            )
        conn.commit()
    click.echo(tetra_id)


@main.group("devices")
def devices_group() -> None:
    """One credential per device: a login role that may write only as its node."""


@devices_group.command("add")
@database_url_option
@click.argument("tetrahedron")
@click.argument("node_id")
@click.option("--role", help="The node's role (sensor, orchestrator, witness, ...), as register sets it.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Write the URL to FILE (created mode 0600) instead of printing it.")
@click.option("--force", is_flag=True, help="Overwrite --output FILE if it exists.")
@click.option("--direct", is_flag=True,
              help="Connect the device to the server itself, never through a connection pooler.")
def devices_add(database_url: str | None, tetrahedron: str, node_id: str, role: str | None,
                output: Path | None, force: bool, direct: bool) -> None:
    """Register NODE_ID in TETRAHEDRON and create its own credential; print its
    database URL, once (the password is not stored anywhere else)."""
    url = database.resolve_url(database_url)
    secret_file = _SecretFile(output, force) if output else None  # refused before any change
    try:
        with database.connect(url, autocommit=False) as conn:
            credential = devices.add(conn, tetrahedron, node_id, role)
            conn.commit()
    except BaseException:
        if secret_file:
            secret_file.abandon()
        raise
    # through the embedded server's PgBouncer when it runs (by password, over TCP),
    # unless --direct asks for the server itself
    pooled = None if direct else pooler.running_url(database_url, user=credential.role)
    device = devices.device_url(pooled or url, credential.role, credential.password)
    if secret_file:
        secret_file.write(device + "\n")
        click.echo(f"{node_id} of {tetrahedron}: role {credential.role}; its URL is in {output} "
                   "(mode 0600)")
    else:
        click.echo(device)


@devices_group.command("list")
@database_url_option
@click.argument("tetrahedron", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def devices_list(database_url: str | None, tetrahedron: str | None, as_json: bool) -> None:
    """List device credentials: vertex, role, created, last heartbeat, last used
    (to the minute) and open sessions."""
    with database.connect(database.resolve_url(database_url)) as conn:
        cur = conn.execute(query("list_devices"), {"tetrahedron": tetrahedron})
        rows, names = cur.fetchall(), [c.name for c in cur.description]
    _emit(names, rows, as_json)


@devices_group.command("revoke")
@database_url_option
@click.argument("tetrahedron")
@click.argument("node_id")
def devices_revoke(database_url: str | None, tetrahedron: str, node_id: str) -> None:
    """Drop NODE_ID's credential and end its sessions: it cannot connect again."""
    with database.connect(database.resolve_url(database_url)) as conn:
        role, ended = devices.revoke(conn, tetrahedron, node_id)
    click.echo(f"revoked {role} ({node_id} of {tetrahedron}); ended {ended} session(s)")


class _SecretFile:
    """A file for a secret: mode 0600 from its creation, never a file that was
    there unless forced, and removed again if the secret never comes."""

    def __init__(self, path: Path, force: bool):
        self.path = path
        existed = path.exists()
        if existed and not force:
            raise FlowMeshError(f"{path} exists; pass --force to overwrite it")
        flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | (0 if existed else os.O_EXCL)
        try:
            self.fd = os.open(path, flags, 0o600)
        except OSError as exc:
            raise FlowMeshError(f"cannot write {path}: {exc.strerror}") from exc
        self.created = not existed
        os.fchmod(self.fd, 0o600)

    def write(self, text: str) -> None:
        os.ftruncate(self.fd, 0)
        os.write(self.fd, text.encode())
        os.close(self.fd)

    def abandon(self) -> None:
        os.close(self.fd)
        if self.created:
            self.path.unlink(missing_ok=True)


@main.command("predict")
@database_url_option
@click.option("--window", "window_size", type=click.IntRange(min=2), default=30, show_default=True,
              help="Heartbeats per node the trend model looks at.")
@click.option("--top", type=click.IntRange(min=0), default=10, show_default=True,
              help="Riskiest nodes to list afterwards (0: none).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def predict(database_url: str | None, window_size: int, top: int, as_json: bool) -> None:
    """Run the prediction pass: score every node's failure risk in SQL, open
    node-failure-predicted alerts for risky nodes, resolve recovered ones."""
    with database.connect(database.resolve_url(database_url)) as conn:
        summary = conn.cursor(row_factory=dict_row).execute(
            query("prediction_pass"), {"window_size": window_size}).fetchone()
        cur = conn.execute(query("nodes_by_risk"), {"tetrahedron": None, "limit": top})
        rows, names = cur.fetchall(), [c.name for c in cur.description]
    if as_json:
        click.echo(json.dumps({**summary, "nodes": [dict(zip(names, r, strict=True)) for r in rows]},
                              default=json_default, indent=2))
        return
    click.echo(f"{summary['nodes_scored']} nodes scored, {summary['alerts_opened']} alerts opened, "
               f"{summary['alerts_resolved']} resolved, {summary['marked_offline']} marked offline")
    if top and rows:
        click.echo(render(names, rows))


@main.command("status")
@database_url_option
@click.option("--tetrahedron", metavar="NAME", help="Only this tetrahedron.")
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON: one object per tetrahedron, keyed by name.")
def status(database_url: str | None, tetrahedron: str | None, as_json: bool) -> None:
    """Mesh summary per tetrahedron: nodes online, degraded and offline, average
    health, last prediction."""
    with database.connect(database.resolve_url(database_url)) as conn:
        cur = conn.execute(query("mesh_summary"), {"tetrahedron": tetrahedron})
        rows, names = cur.fetchall(), [c.name for c in cur.description]
    if tetrahedron and not rows:
        raise FlowMeshError(f"no tetrahedron named {tetrahedron!r}")
    if as_json:
        summaries = {r[0]: dict(zip(names[1:], r[1:], strict=True)) for r in rows}
        click.echo(json.dumps(summaries[tetrahedron] if tetrahedron else summaries,
                              default=json_default, indent=2))
    else:
        click.echo(render(names, rows))


@main.group("schedule")
def schedule() -> None:
    """Run the heartbeat check and the prediction pass on a cadence, in the
    database (pg_cron)."""


@schedule.command("install")
@database_url_option
@click.option("--every", default="5m", show_default=True, metavar="PERIOD",
              help="How often: 1m, 5m, 15m, 1h... (pg_cron before 1.5 schedules by the minute).")
@click.option("--threshold-minutes", type=click.IntRange(min=0),
              default=schedules.DEFAULT_THRESHOLD_MINUTES, show_default=True,
              help="Silence after which a tetrahedron gets a mesh-degrading alert.")
@click.option("--window", "window_size", type=click.IntRange(min=2),
              default=schedules.DEFAULT_WINDOW_SIZE, show_default=True,
              help="Heartbeats per node the prediction pass looks at.")
@click.option("--retention-days", type=click.IntRange(min=1),
              default=schedules.DEFAULT_RETENTION_DAYS, show_default=True,
              help="Heartbeats older than this are dropped (daily job, by partition).")
def schedule_install(database_url: str | None, every: str, threshold_minutes: int, window_size: int,
                     retention_days: int) -> None:
    """Install (or replace) the pg_cron jobs flowmesh-checks (the heartbeat check,
    the prediction pass, expired guardian decisions) and flowmesh-retention (daily)."""
    schedules.parse_every(every)  # a bad period fails before touching the database
    with database.connect(database.resolve_url(database_url)) as conn:
        try:
            installed = schedules.install(conn, every, threshold_minutes, retention_days, window_size)
        except FlowMeshError as exc:
            raise FlowMeshError(
                f"{exc}; run the same SQL on the same cadence with: "
                f"{schedules.fallback_hint(every, threshold_minutes, retention_days, window_size)}"
            ) from None
    click.echo(render(["job", "schedule", "command"], installed))


@schedule.command("list")
@database_url_option
def schedule_list(database_url: str | None) -> None:
    """List FlowMesh's pg_cron jobs and their last run."""
    with database.connect(database.resolve_url(database_url)) as conn:
        names, rows = schedules.listing(conn)
    click.echo(render(names, rows))


@schedule.command("remove")
@database_url_option
def schedule_remove(database_url: str | None) -> None:
    """Remove FlowMesh's pg_cron jobs."""
    with database.connect(database.resolve_url(database_url)) as conn:
        removed = schedules.remove(conn)
    click.echo(f"removed {len(removed)} jobs" + (f": {', '.join(removed)}" if removed else ""))


@main.command("up")
@database_url_option
@click.option("--bind", default="127.0.0.1", show_default=True, metavar="ADDR",
              help="The dashboard's address.")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True,
              help="The dashboard's port.")
@click.option("--agent-http-port", type=click.IntRange(1, 65535), metavar="PORT",
              help="Also serve the agent's own endpoints (/health, /network, /map) on this "
              "loopback port [default: off].")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="The dashboard's token file (mode 0600), required when --bind is not loopback.")
@click.option("--demo", is_flag=True, help="Also run the simulated fleet of `flowmesh demo`.")
def up(database_url: str | None, bind: str, port: int, agent_http_port: int | None, token_file: Path | None,
       demo: bool) -> None:
    """Run the whole product until Ctrl-C: the database, this device's agent, the
    scheduled checks and the dashboard (and with --demo a simulated fleet).

    Each part's lines are printed with its name in front. Ctrl-C (or SIGTERM)
    stops every part and exits 0; a part that exits by itself stops the others,
    exit code 1. The embedded database keeps running afterwards (`flowmesh db stop`).
    """
    echo = click.echo
    host = f"[{bind}]" if ":" in bind else bind
    echo(f"dashboard: http://{host}:{port}/")
    db = stack.open_database(database_url, echo)
    if db.embedded:
        echo(f"database: {db.url} (embedded; it keeps running after this stops: "
             "`flowmesh db stop` stops it)")
    else:
        echo("database: the server of --database-url")
    agent = ["run"]
    if agent_http_port is not None:
        agent += ["--http-port", str(agent_http_port)]
        echo(f"agent endpoints: http://127.0.0.1:{agent_http_port}/map")
    children = [stack.Child("agent", stack.python_command("flowmesh_edge.cli", *agent),
                            {settings.DATABASE_URL_ENV: db.agent_url})]
    server = {settings.DATABASE_URL_ENV: db.url}
    every = stack.install_schedules(db.url)
    if every:
        echo(f"checks: pg_cron job {schedules.CHECKS_JOB} every {every}, in the database "
             "(it keeps running there: `flowmesh schedule remove` removes it)")
    else:
        children.append(stack.Child("checks", stack.python_command(
            "monitors.mesh_health", "--every", stack.CHECKS_EVERY), server))
    dashboard = ["dashboard", "--bind", bind, "--port", str(port)]
    if token_file is not None:
        dashboard += ["--token-file", str(token_file)]
    children.append(stack.Child("dashboard", stack.python_command("flowmesh.cli", *dashboard), server))
    if demo:
        children.append(stack.Child("demo", stack.python_command("flowmesh.cli", "demo"), server))
    code = stack.run(children, echo)
    if db.embedded:
        echo("the embedded database is still running (`flowmesh db stop` stops it)")
    sys.exit(code)


@main.command("demo")
@database_url_option
@click.option("--tetrahedron", metavar="NAME",
              help="The demo's tetrahedron, removed and made anew at each start [default: demo].")
@click.option("--reset", is_flag=True, help="Only remove the previous demo tetrahedron, and exit.")
@click.option("--speed", type=click.FloatRange(min=0, min_open=True), default=1.0, hidden=True,
              envvar="FLOWMESH_DEMO_SPEED", help="Run the scenario this many times faster (tests).")
def demo(database_url: str | None, tetrahedron: str | None, reset: bool, speed: float) -> None:
    """Run a simulated fleet on loopback until Ctrl-C: a phone, a Pi and a laptop in
    tetrahedron `demo`, real agents shipping heartbeats the normal way.

    Within a minute: the mesh forms, the phone degrades (battery, latency) and the
    prediction pass sees it coming, the Pi overheats and stops dead, its peers
    declare it dead and it goes offline with its alert open. One line per stage.
    Each start removes the previous demo tetrahedron first (never one with devices
    the demo does not make).
    """
    from flowmesh_edge import demo as fleet  # noqa: PLC0415 (the agent's code, only here)

    tetrahedron = tetrahedron or fleet.TETRAHEDRON
    url = database.resolve_url(database_url)
    if reset:
        removed = fleet.reset(url, tetrahedron)
        click.echo(f"removed the {tetrahedron} tetrahedron" if removed
                   else f"no {tetrahedron} tetrahedron to remove")
        return
    fleet.run(url, click.echo, speed, tetrahedron)


# the web dashboard (monitors/dashboard/command.py; its web stack loads only when it runs)
main.add_command(dashboard_command)


def _emit(names: list[str], rows: list[tuple], as_json: bool) -> None:
    if as_json:
        records = [dict(zip(names, r, strict=True)) for r in rows]
        click.echo(json.dumps(records, default=json_default, indent=2))
    else:
        click.echo(render(names, rows))


if __name__ == "__main__":
    main()
