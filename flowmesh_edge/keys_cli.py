"""``flowmesh-edge keys``: the keyring of a saved mesh (list, add, use, remove, rotate).

A change is written to the saved meshes file at the next keyring version; the
running agent sees it within a second and carries it out over the whole mesh
in safe steps (install, use, remove: flowmesh_edge/mesh/rotation.py), saving
each step. Keys are named by their id (8 hex digits); a key itself is only
ever read from a 0600 file or generated, never taken from the command line
or printed.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import click

from flowmesh.table import render

from .mesh.keyring import generate_key, key_id, key_problem
from .meshes import MeshesFileError, MeshNotFound, SavedMesh, SavedMeshes, agent_running
from .meshes_cli import meshes_file_option

mesh_option = click.option("--mesh", "mesh_prefix", metavar="ID",
                           help="The saved mesh (the start of its id) [default: the only one].")
offline_option = click.option(
    "--offline", is_flag=True,
    help="Change the keyring although no agent runs on this meshes file to spread it.")


@click.group("keys")
def keys() -> None:
    """The keys of a saved mesh: list, add, use, remove, rotate.

    One primary key signs and encrypts what this device sends; every key of
    the ring is accepted. The running agent spreads each change to the whole
    mesh, in steps that never leave a member unable to read another."""


@keys.command("list")
@mesh_option
@meshes_file_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def keys_list(mesh_prefix: str | None, meshes_file: Path | None, as_json: bool) -> None:
    """List the keys of the saved meshes by id (never a key), the primary first."""
    store = _load(meshes_file)
    chosen = ([_choose(store, mesh_prefix)] if mesh_prefix
              else sorted(store, key=lambda m: (m.name, m.mesh_id)))
    records = [{"mesh": m.mesh_id, "name": m.name, "key": key_id(k),
                "role": "primary" if i == 0 else "secondary", "keyring_version": m.keyring_version,
                "encrypt": m.encrypt}
               for m in chosen for i, k in enumerate(m.keys)]
    if as_json:
        click.echo(json.dumps(records, indent=2))
        return
    rows = [(r["mesh"], r["name"], r["key"], r["role"], r["keyring_version"], "on" if r["encrypt"] else "off")
            for r in records]
    click.echo(render(["mesh", "name", "key", "role", "version", "encrypt"], rows))


@keys.command("add")
@mesh_option
@click.option("--key-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A file (mode 0600) holding the key [default: a new random key].")
@meshes_file_option
def keys_add(mesh_prefix: str | None, key_file: Path | None, meshes_file: Path | None) -> None:
    """Install a key: accepted from every member, not yet used.

    Make it the primary with `keys use ID` once the agent has spread it."""
    store = _load(meshes_file)
    mesh = _choose(store, mesh_prefix)
    key = _read_key(key_file) if key_file else generate_key()
    if key in mesh.keys:
        raise click.ClickException(f"mesh {mesh.mesh_id} already holds key {key_id(key)}")
    _change(store, mesh, [*mesh.keys, key])
    click.echo(f"installed key {key_id(key)} in mesh {mesh.mesh_id} ({mesh.name}) as a secondary key")
    _tell_agent(store, f"make it the primary with: flowmesh-edge keys use {key_id(key)}")


@keys.command("use")
@click.argument("key", metavar="KEY_ID")
@mesh_option
@offline_option
@meshes_file_option
def keys_use(key: str, mesh_prefix: str | None, offline: bool, meshes_file: Path | None) -> None:
    """Make a key of the ring the primary: what this device (then the mesh) signs with."""
    store = _load(meshes_file)
    mesh = _choose(store, mesh_prefix)
    _need_agent(store, offline)
    chosen = _find_key(mesh, key)
    if chosen == mesh.mesh_key:
        raise click.ClickException(f"key {key_id(chosen)} is already the primary of mesh {mesh.mesh_id}")
    _change(store, mesh, [chosen, *(k for k in mesh.keys if k != chosen)])
    click.echo(f"key {key_id(chosen)} is the primary of mesh {mesh.mesh_id} ({mesh.name})")
    _tell_agent(store, f"remove the old key with: flowmesh-edge keys remove {key_id(mesh.keys[1])}")


@keys.command("remove")
@click.argument("key", metavar="KEY_ID")
@mesh_option
@offline_option
@meshes_file_option
def keys_remove(key: str, mesh_prefix: str | None, offline: bool, meshes_file: Path | None) -> None:
    """Stop accepting a key (not the primary: `keys use` another first)."""
    store = _load(meshes_file)
    mesh = _choose(store, mesh_prefix)
    _need_agent(store, offline)
    chosen = _find_key(mesh, key)
    if chosen == mesh.mesh_key:
        raise click.ClickException(f"key {key_id(chosen)} is the primary of mesh {mesh.mesh_id}: make "
                                   "another key the primary first (flowmesh-edge keys use ID)")
    _change(store, mesh, [k for k in mesh.keys if k != chosen])
    click.echo(f"removed key {key_id(chosen)} from mesh {mesh.mesh_id} ({mesh.name})")
    _tell_agent(store, "members still using it can no longer talk to this device")


@keys.command("rotate")
@mesh_option
@offline_option
@meshes_file_option
def keys_rotate(mesh_prefix: str | None, offline: bool, meshes_file: Path | None) -> None:
    """Replace every key of the mesh by a new random one: the agent installs it
    everywhere, makes it the primary everywhere, then removes the old keys."""
    store = _load(meshes_file)
    mesh = _choose(store, mesh_prefix)
    _need_agent(store, offline)
    key = generate_key()
    old = [key_id(k) for k in mesh.keys]
    _change(store, mesh, [key])
    click.echo(f"mesh {mesh.mesh_id} ({mesh.name}): new key {key_id(key)} replaces {', '.join(old)}")
    _tell_agent(store, "see the steps in the agent's log, or `flowmesh-edge keys list` on any member")


@keys.command("encryption")
@click.argument("state", type=click.Choice(["on", "off"]))
@mesh_option
@meshes_file_option
def keys_encryption(state: str, mesh_prefix: str | None, meshes_file: Path | None) -> None:
    """Seal (encrypt) what this device sends to the mesh, or only authenticate it.

    On by default. Every member accepts both, so this is set device by device;
    the running agent applies it within a second."""
    store = _load(meshes_file)
    mesh = _choose(store, mesh_prefix)
    store.add_or_update(mesh.mesh_key, encrypt=state == "on")
    try:
        store.save()
    except MeshesFileError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"mesh {mesh.mesh_id} ({mesh.name}): encryption {state}")


# -- helpers ------------------------------------------------------------------------------


def _load(path: Path | None) -> SavedMeshes:
    try:
        return SavedMeshes.load(path, report=lambda m: click.echo(f"flowmesh-edge: warning: {m}", err=True))
    except MeshesFileError as exc:
        raise click.ClickException(str(exc)) from None


def _choose(store: SavedMeshes, prefix: str | None) -> SavedMesh:
    if prefix:
        try:
            return store.find(prefix)
        except MeshNotFound as exc:
            raise click.ClickException(str(exc)) from None
    saved = list(store)
    if len(saved) == 1:
        return saved[0]
    if not saved:
        raise click.ClickException(f"no saved mesh in {store.path}: join one first (flowmesh-edge run "
                                   "--mesh-key, or flowmesh-edge pair)")
    raise click.ClickException(f"{len(saved)} saved meshes: choose one with --mesh ID "
                               f"({', '.join(sorted(m.mesh_id for m in saved))})")


def _find_key(mesh: SavedMesh, wanted: str) -> str:
    wanted = wanted.strip().lower()
    matches = [k for k in mesh.keys if key_id(k).startswith(wanted)] if wanted else []
    if len(matches) != 1:
        ids = ", ".join(key_id(k) for k in mesh.keys)
        raise click.ClickException(f"mesh {mesh.mesh_id} has {'no' if not matches else 'more than one'} key "
                                   f"{wanted!r} (its keys: {ids})")
    return matches[0]


def _read_key(path: Path) -> str:
    mode = path.stat().st_mode
    if mode & 0o077:
        raise click.ClickException(f"{path} is open to group or others (mode {stat.S_IMODE(mode):04o}); "
                                   "a key file must be 0600")
    try:
        key = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"{path}: cannot read a key from it: {exc}") from None
    problem = key_problem(key)
    if problem:
        raise click.ClickException(f"{path}: {problem}")
    return key


def _change(store: SavedMeshes, mesh: SavedMesh, keys: list[str]) -> None:
    try:
        store.set_keys(mesh.mesh_id, keys, mesh.keyring_version + 1)
        store.save()
    except ValueError as exc:
        raise click.ClickException(f"mesh {mesh.mesh_id}: {exc}") from None
    except MeshesFileError as exc:
        raise click.ClickException(str(exc)) from None


def _need_agent(store: SavedMeshes, offline: bool) -> None:
    if not offline and not agent_running(store.path):
        raise click.ClickException(
            f"no agent runs on {store.path}: start `flowmesh-edge run` so that it spreads the change to "
            "the mesh, or pass --offline to change only this device's keyring (it may then be unable "
            "to talk to members that do not hold its keys)")


def _tell_agent(store: SavedMeshes, next_step: str) -> None:
    if agent_running(store.path):
        click.echo(f"the running agent spreads it to the mesh; {next_step}")
    else:
        click.echo(f"no agent runs now: the next `flowmesh-edge run` spreads it; {next_step}")
