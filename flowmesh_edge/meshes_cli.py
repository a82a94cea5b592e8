"""``flowmesh-edge meshes``: the meshes this device joined (list, forget).

Thin over :mod:`flowmesh_edge.meshes`. Nothing here ever prints a mesh key
or a relay token, in the table or in ``--json``.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import click

from flowmesh.table import render

from .mesh.relay_protocol import public_url
from .meshes import MeshesFileError, MeshNotFound, SavedMesh, SavedMeshes

MESHES_FILE_ENV = "FLOWMESH_MESHES_FILE"
#: A mesh connected within this many seconds is shown as connected (the agent
#: records a connection at least this often while it is in the mesh).
CONNECTED_RECENTLY_S = 120.0

meshes_file_option = click.option(
    "--meshes-file", type=click.Path(dir_okay=False, path_type=Path), envvar=MESHES_FILE_ENV,
    show_envvar=True, help="Saved meshes file [default: <data dir>/meshes.json].",
)


@click.group("meshes")
def meshes() -> None:
    """The meshes this device joined: list them, forget one.

    They are saved with their keys (mode 0600) so that `flowmesh-edge run`
    rejoins them by itself."""


@meshes.command("list")
@meshes_file_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def meshes_list(meshes_file: Path | None, as_json: bool) -> None:
    """List the saved meshes (never their keys or tokens).

    Each with its state (connected over which transport, or last seen when),
    auto-reconnect, and how many endpoints are known."""
    store = _load(meshes_file)
    now = time.time()
    saved = sorted(store, key=lambda m: (m.name, m.mesh_id))
    if as_json:
        click.echo(json.dumps([_record(m, now) for m in saved], indent=2))
        return
    rows = [(m.mesh_id, m.name, state(m, now), "on" if m.auto_reconnect else "off", len(m.endpoints))
            for m in saved]
    click.echo(render(["id", "name", "state", "auto_reconnect", "endpoints"], rows))


@meshes.command("forget")
@click.argument("mesh_id", metavar="ID")
@meshes_file_option
def meshes_forget(mesh_id: str, meshes_file: Path | None) -> None:
    """Remove a saved mesh, its key with it.

    The agent no longer rejoins it. ID may be the start of the id when only
    one saved mesh has it."""
    store = _load(meshes_file)
    try:
        mesh = store.find(mesh_id)
    except MeshNotFound as exc:
        raise click.ClickException(str(exc)) from None
    store.forget(mesh.mesh_id)
    _save(store)
    click.echo(f"forgot mesh {mesh.mesh_id} ({mesh.name})")


def state(mesh: SavedMesh, now: float) -> str:
    """``connected over relay, 5 s ago``, ``last seen 3 h ago`` or ``never connected``."""
    if mesh.last_connected is not None and now - mesh.last_connected <= CONNECTED_RECENTLY_S:
        over = f" over {mesh.connected_via}" if mesh.connected_via else ""
        return f"connected{over}, {ago(now - mesh.last_connected)}"
    last_seen = mesh.last_seen
    if last_seen is not None:
        return f"last seen {ago(now - last_seen)}"
    return "never connected"


def ago(seconds: float) -> str:
    seconds = max(0.0, seconds)  # a clock that stepped back: not "in the future"
    for unit, size, up_to in (("s", 1, 120), ("min", 60, 120 * 60), ("h", 3600, 48 * 3600)):
        if seconds < up_to:
            return f"{int(seconds // size)} {unit} ago"
    return f"{int(seconds // 86400)} d ago"


def _iso(moment: float | None) -> str | None:
    return None if moment is None else datetime.fromtimestamp(moment, UTC).isoformat()


def _record(mesh: SavedMesh, now: float) -> dict:
    """What ``--json`` says of a mesh: everything but its key and relay token."""
    return {
        "id": mesh.mesh_id, "name": mesh.name, "founder": mesh.founder, "state": state(mesh, now),
        "relay_url": public_url(mesh.relay_url), "relay_token_saved": mesh.relay_token is not None,
        "joined_at": _iso(mesh.joined_at), "last_connected": _iso(mesh.last_connected),
        "connected_via": mesh.connected_via, "last_seen": _iso(mesh.last_seen),
        "auto_reconnect": mesh.auto_reconnect,
        "endpoints": [{"node": e.node_id, "address": e.address, "last_seen": _iso(e.last_seen),
                       "rtt_ms": e.rtt_ms, "last_success": _iso(e.last_success)}
                      for e in mesh.endpoints_by_success()],
    }


def _load(path: Path | None) -> SavedMeshes:
    try:
        return SavedMeshes.load(path, report=lambda m: click.echo(f"flowmesh-edge: warning: {m}", err=True))
    except MeshesFileError as exc:
        raise click.ClickException(str(exc)) from None


def _save(store: SavedMeshes) -> None:
    try:
        store.save()
    except MeshesFileError as exc:
        raise click.ClickException(str(exc)) from None
