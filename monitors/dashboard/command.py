"""``flowmesh dashboard``: serve the dashboard until Ctrl-C or SIGTERM.

Kept light: the web stack is imported only when the command runs.
"""

from __future__ import annotations

import logging
import socket
import sys
from pathlib import Path

import click

from flowmesh.clisupport import database_url_option


def _listen(bind: str, port: int) -> socket.socket:
    """A listening socket on ``bind``:``port`` (so the URL printed is the real one, port 0 included)."""
    family, kind, proto, _, address = socket.getaddrinfo(bind, port, type=socket.SOCK_STREAM,
                                                        flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def _url(bind: str, port: int) -> str:
    host = f"[{bind}]" if ":" in bind else bind
    return f"http://{host}:{port}/"


@click.command("dashboard")
@click.option("--bind", default="127.0.0.1", show_default=True, envvar="FLOWMESH_DASHBOARD_BIND",
              show_envvar=True, help="Address to listen on. Off loopback, --token-file is required.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              envvar="FLOWMESH_DASHBOARD_PORT", show_envvar=True, help="TCP port (0: any free port).")
@database_url_option
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path),
              envvar="FLOWMESH_DASHBOARD_TOKEN_FILE", show_envvar=True,
              help="File (mode 0600) holding the token clients must send, as a bearer token or "
                   "through the login form. Required off loopback.")
@click.option("--jwt-secret-file", type=click.Path(dir_okay=False, path_type=Path),
              envvar="FLOWMESH_DASHBOARD_JWT_SECRET_FILE", show_envvar=True,
              help="File (mode 0600) holding the Supabase JWT secret: a user's JWT is then accepted "
                   "and applied per request, so row-level security shows them their own tetrahedrons.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True)
def dashboard(bind: str, port: int, database_url: str | None, token_file: Path | None,
              jwt_secret_file: Path | None, log_level: str) -> None:
    """Serve the live web dashboard (pages, JSON API, events, badges) until Ctrl-C.

    Every figure comes from the SQL API with the rights of the database role
    the dashboard connects as (or, with a JWT, of the user's role), so
    row-level security applies. The database may be down: the pages say so
    and recover by themselves.
    """
    from flowmesh import database

    from .access import Access, AccessError

    try:
        access = Access.for_bind(bind, token_file, jwt_secret_file)
    except AccessError as exc:
        raise click.ClickException(str(exc)) from None
    url = database.resolve_url(database_url)
    try:
        sock = _listen(bind, port)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {bind}:{port}: {exc.strerror or exc}") from None
    click.echo(f"dashboard: {_url(bind, sock.getsockname()[1])}", err=False)
    sys.stdout.flush()
    logging.basicConfig(level=getattr(logging, log_level.upper()),
                        format="%(asctime)s flowmesh dashboard %(levelname)s %(message)s", stream=sys.stderr)

    from .app import create_app
    from .server import DashboardServer

    app = create_app(url, token=access.token, jwt_secret=access.jwt_secret)
    server = DashboardServer(app, bind, sock.getsockname()[1], log_level="warning")
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
